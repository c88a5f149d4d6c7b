//! The `s3://BUCKET/PREFIX` backend: `object_store`'s S3 client, path-style, configured from
//! the standard `AWS_*` environment, driven by a private tokio runtime so callers stay
//! synchronous (tokio does not leak out of this crate).

use crate::backend::Backend;
use crate::error::{RepoError, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A bucket (and a prefix inside it) on an S3-compatible store.
#[derive(Debug)]
pub struct S3Backend {
    store: AmazonS3,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl S3Backend {
    /// `spec` is `BUCKET/PREFIX` (the prefix may be empty).
    ///
    /// # Errors
    /// No bucket, or the client cannot be built from the environment.
    pub fn new(spec: &str) -> Result<Self> {
        let (bucket, prefix) = spec.split_once('/').unwrap_or((spec, ""));
        if bucket.is_empty() {
            return Err(RepoError::Invalid(format!(
                "s3://{spec}: no bucket; use s3://BUCKET/PREFIX"
            )));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|e| {
                RepoError::Invalid(format!(
                    "s3://{spec}: cannot configure the S3 client ({e}); set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ALLOW_HTTP=true for http)"
                ))
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RepoError::io("cannot start the S3 client's runtime", e))?;
        Ok(S3Backend {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            runtime,
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn relative(&self, location: &ObjectPath) -> String {
        let s = location.as_ref();
        if self.prefix.is_empty() {
            return s.to_string();
        }
        s.strip_prefix(&self.prefix)
            .map_or(s, |r| r.trim_start_matches('/'))
            .to_string()
    }
}

fn s3_err(op: &'static str, name: &str, e: object_store::Error) -> RepoError {
    let missing = matches!(e, object_store::Error::NotFound { .. });
    RepoError::backend(op, name, missing, e.to_string())
}

impl Backend for S3Backend {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let payload = PutPayload::from(data.to_vec());
        self.runtime
            .block_on(self.store.put(&self.path(name), payload))
            .map(|_| ())
            .map_err(|e| s3_err("put", name, e))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.runtime
            .block_on(async {
                let r = self.store.get(&self.path(name)).await?;
                r.bytes().await
            })
            .map(|b| b.to_vec())
            .map_err(|e| s3_err("get", name, e))
    }

    fn get_range(&self, name: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let b = self
            .runtime
            .block_on(self.store.get_range(&self.path(name), start..start + len))
            .map_err(|e| s3_err("get", name, e))?;
        if b.len() as u64 != len {
            return Err(RepoError::Backend {
                op: "get",
                object: name.to_string(),
                detail: format!("asked for {len} bytes at {start}, got {}", b.len()),
            });
        }
        Ok(b.to_vec())
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let metas: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&p)).try_collect())
            .map_err(|e| s3_err("list", prefix, e))?;
        let mut out: Vec<(String, u64)> = metas
            .iter()
            .map(|m| (self.relative(&m.location), m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&self.path(name))) {
            Err(e) if !matches!(e, object_store::Error::NotFound { .. }) => {
                Err(s3_err("delete", name, e))
            }
            _ => Ok(()),
        }
    }

    fn exists(&self, name: &str) -> Result<bool> {
        match self.runtime.block_on(self.store.head(&self.path(name))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(s3_err("head", name, e)),
        }
    }
}
