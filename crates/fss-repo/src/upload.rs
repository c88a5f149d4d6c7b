//! Parallel pack uploads: `n` threads each store a pack and then its index (a pack before the
//! index that names it, so an index never points at a missing pack).

use crate::error::{RepoError, Result};
use crate::format::{index_object, pack_object, PackIndex};
use crate::repo::Repository;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// A closed pack: its name, bytes and index.
pub(crate) struct Pack {
    pub name: String,
    pub data: Vec<u8>,
    pub index: PackIndex,
}

/// Threads uploading packs; [`Uploader::finish`] waits for them and returns the bytes stored.
pub(crate) struct Uploader<'scope> {
    tx: Option<SyncSender<Pack>>,
    threads: Vec<std::thread::ScopedJoinHandle<'scope, Result<u64>>>,
}

impl<'scope> Uploader<'scope> {
    pub fn new<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        repo: &'env Repository,
        connections: usize,
    ) -> Self {
        let n = connections.max(1);
        // At most one pack waiting per thread bounds memory to about 2n packs.
        let (tx, rx) = sync_channel::<Pack>(n);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let rx = Arc::clone(&rx);
                scope.spawn(move || upload_loop(repo, &rx))
            })
            .collect();
        Uploader {
            tx: Some(tx),
            threads,
        }
    }

    /// Queue a pack (blocks while every thread is busy and the queue is full).
    pub fn send(&self, pack: Pack) -> Result<()> {
        let failed = || RepoError::Invalid("the upload threads stopped after an error".into());
        self.tx
            .as_ref()
            .ok_or_else(failed)?
            .send(pack)
            .map_err(|_| failed())
    }

    /// Wait for every queued pack; the first error, or the bytes stored.
    pub fn finish(mut self) -> Result<u64> {
        drop(self.tx.take());
        let mut total = 0;
        let mut first_err = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(RepoError::Invalid("an upload thread panicked".into()));
                }
            }
        }
        first_err.map_or(Ok(total), Err)
    }
}

fn upload_loop(repo: &Repository, rx: &Mutex<Receiver<Pack>>) -> Result<u64> {
    let mut total = 0;
    loop {
        let next = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return Ok(total),
        };
        let Ok(pack) = next else { return Ok(total) };
        repo.backend().put(&pack_object(&pack.name), &pack.data)?;
        total += pack.data.len() as u64;
        total += repo.write_immutable_doc(&index_object(&pack.name), &pack.index)?;
    }
}
