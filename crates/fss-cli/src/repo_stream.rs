//! A byte channel between threads: the daemon's backup stream is written into a
//! [`ChannelWriter`] on one thread and parsed from a [`ChannelReader`] on another, with a few
//! MiB in flight, so a repository backup never holds the stream in memory or on disk.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Pieces in flight.
const DEPTH: usize = 16;
/// Bytes per piece.
const PIECE: usize = 256 << 10;

/// The writing end.
pub struct ChannelWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

/// The reading end; end of stream when the writer is dropped.
pub struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

/// A connected pair.
#[must_use]
pub fn channel() -> (ChannelWriter, ChannelReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        },
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx.send(piece).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the repository writer stopped",
            )
        })
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.cur = piece;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_end() {
        let (mut w, mut r) = channel();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || w.write_all(&sent));
        let mut got = Vec::new();
        let n = r.read_to_end(&mut got);
        assert!(matches!(t.join(), Ok(Ok(()))));
        assert_eq!(n.ok(), Some(data.len()));
        assert_eq!(got, data);
    }
}
