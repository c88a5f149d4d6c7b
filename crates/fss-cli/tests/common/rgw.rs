//! One Ceph RADOS Gateway on 127.0.0.1:7480 per test binary (tools/ceph-rgw/up.sh), its state
//! under a temporary directory, stopped (down.sh) when the guard drops, in every outcome.

use super::loopdev::run;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's tools/ceph-rgw.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/ceph-rgw")
}

/// A running gateway.
pub struct Gateway {
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Start it (about 15 s); panics with what to install when Ceph is missing.
    pub fn start() -> Gateway {
        for tool in [
            "ceph-mon",
            "ceph-osd",
            "ceph-mgr",
            "radosgw",
            "radosgw-admin",
            "uuidgen",
            "curl",
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(found, "{tool} is missing: apt-get install -y ceph-mon ceph-osd ceph-mgr radosgw ceph-common uuid-runtime curl");
        }
        let dir = tempfile::tempdir().unwrap();
        let g = Gateway { dir };
        let out = Command::new("bash")
            .arg(tools().join("up.sh"))
            .env("D", g.dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("READY"),
            "up.sh failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        g
    }

    /// The environment an S3 client needs.
    pub fn env() -> [(&'static str, &'static str); 5] {
        [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:7480"),
            ("AWS_ACCESS_KEY_ID", "AKTEST"),
            ("AWS_SECRET_ACCESS_KEY", "SKTEST"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    }

    /// A signed S3 request with curl: `method` on `path` ("/bucket/key"), the body from
    /// `upload`, the answer into `output`.
    pub fn curl(method: &str, path: &str, upload: Option<&Path>, output: Option<&Path>) {
        let mut args: Vec<String> = [
            "-sf",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "AKTEST:SKTEST",
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            "-X",
            method,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(u) = upload {
            args.push("--data-binary".into());
            args.push(format!("@{}", u.display()));
        }
        if let Some(o) = output {
            args.push("-o".into());
            args.push(o.display().to_string());
        }
        args.push(format!("http://127.0.0.1:7480{path}"));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("curl", &a);
    }

    /// Create a bucket.
    pub fn bucket(&self, name: &str) {
        Self::curl("PUT", &format!("/{name}"), None, None);
    }

    fn admin(&self, args: &[&str]) -> serde_json::Value {
        let conf = self.dir.path().join("ceph.conf");
        let mut a = vec!["-c", conf.to_str().unwrap()];
        a.extend(args);
        serde_json::from_str(&run("radosgw-admin", &a)).unwrap()
    }

    /// (bytes, objects) stored in a bucket, exact.
    pub fn stats(&self, bucket: &str) -> (u64, u64) {
        let v = self.admin(&["bucket", "stats", &format!("--bucket={bucket}")]);
        let main = &v["usage"]["rgw.main"];
        (
            main["size"].as_u64().unwrap_or(0),
            main["num_objects"].as_u64().unwrap_or(0),
        )
    }

    /// Every object name in a bucket.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        let v = self.admin(&[
            "bucket",
            "list",
            &format!("--bucket={bucket}"),
            "--max-entries=100000",
        ]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(tools().join("down.sh"))
            .env("D", self.dir.path())
            .status();
    }
}
