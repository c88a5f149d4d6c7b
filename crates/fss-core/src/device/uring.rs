//! Many positional reads in flight at once, from one thread: io_uring, behind a safe call that
//! returns only when every read it started has finished.
//!
//! Why: a snapshot read gathers its bytes from the volume and from stores, often as a dozen
//! pieces of 32 KiB at scattered places. One after another, each waits a full disk round trip;
//! submitted together, the disk serves them in parallel, as it would one large read. A thread
//! pool could do the same, but pays two thread hand-offs per piece.
//!
//! Each thread keeps its own small ring, made on first use. Where io_uring is unavailable
//! (disabled by `kernel.io_uring_disabled`, refused by a seccomp filter), the reads run one
//! after another with `pread`, with the same results.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Entries of each thread's ring: the most reads in flight per call.
const RING_ENTRIES: u32 = 64;

/// One read of a batch: `buf.len()` bytes of `fd` from `offset`.
#[derive(Debug)]
pub struct BatchRead<'a> {
    /// Where to read from.
    pub fd: BorrowedFd<'a>,
    /// Byte offset in the file.
    pub offset: u64,
    /// What to fill, entirely.
    pub buf: &'a mut [u8],
}

/// The first read of a batch that failed: its index in the batch, and why.
#[derive(Debug)]
pub struct BatchError {
    /// Index of the read in the slice given to [`read_all`].
    pub index: usize,
    /// What went wrong (a read past the end of a file is `UnexpectedEof`).
    pub error: io::Error,
}

thread_local! {
    /// This thread's ring: `None` until first use, `Some(None)` if io_uring is unavailable.
    static RING: RefCell<Option<Option<io_uring::IoUring>>> = const { RefCell::new(None) };
}

/// Fill every read's buffer, with up to [`RING_ENTRIES`] reads in flight at once.
///
/// # Errors
/// The first read (by index) that failed. Every read has finished, successfully or not, when
/// this returns.
pub fn read_all(reads: &mut [BatchRead<'_>]) -> Result<(), BatchError> {
    if reads.len() <= 1 {
        return reads
            .iter_mut()
            .enumerate()
            .try_for_each(|(index, r)| pread_all(r).map_err(|error| BatchError { index, error }));
    }
    RING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ring = cell.get_or_insert_with(|| io_uring::IoUring::new(RING_ENTRIES).ok());
        let mut first_err = None;
        let mut at = 0;
        while at < reads.len() {
            let Some(r) = ring.as_mut() else { break };
            let end = reads.len().min(at + RING_ENTRIES as usize);
            let chunk = &mut reads[at..end];
            match in_flight(r, chunk) {
                Ok(done) => finish(chunk, at, &done, &mut first_err),
                Err(e) => {
                    // Nothing of this chunk is in the kernel's hands (see `in_flight`): drop
                    // the ring (its unsubmitted entries with it) and read the rest one by one.
                    tracing::debug!("io_uring failed ({e}); this thread reads with pread now");
                    *ring = None;
                    break;
                }
            }
            at = end;
        }
        for (index, r) in reads.iter_mut().enumerate().skip(at) {
            if let (Err(error), None) = (pread_all(r), &first_err) {
                first_err = Some(BatchError { index, error });
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

/// Bytes each read of `chunk` got from the ring, or the errno it ended with.
type Outcome = Vec<Result<usize, i32>>;

/// Submit every read of `chunk` (at most the ring's size) and wait for all of them.
///
/// Returns an error only when no read of `chunk` was handed to the kernel, so the caller may
/// reuse the buffers at once; once any was, this waits until every one has completed.
#[allow(unsafe_code)]
fn in_flight(ring: &mut io_uring::IoUring, chunk: &mut [BatchRead<'_>]) -> io::Result<Outcome> {
    let mut done: Outcome = chunk.iter().map(|_| Ok(0)).collect();
    {
        let mut sq = ring.submission();
        for (i, r) in chunk.iter_mut().enumerate() {
            let len = u32::try_from(r.buf.len()).unwrap_or(u32::MAX);
            let entry = io_uring::opcode::Read::new(
                io_uring::types::Fd(r.fd.as_raw_fd()),
                r.buf.as_mut_ptr(),
                len,
            )
            .offset(r.offset)
            .build()
            .user_data(i as u64);
            // SAFETY: the entry points into `r.buf`, borrowed mutably by this call and, as this
            // function waits below for every entry the kernel took, for as long as the kernel
            // may write into it; `r.fd` outlives the call too. The queue is empty on entry
            // (every earlier call waited for all its entries) and `chunk` fits in the ring,
            // so the push cannot fail; if it did, the entry simply would not be queued.
            if unsafe { sq.push(&entry) }.is_err() {
                done[i] = Err(rustix::io::Errno::AGAIN.raw_os_error());
            }
        }
    }
    let queued = done.iter().filter(|d| d.is_ok()).count();
    // A read that could not be queued is redone with pread by `finish`.
    for d in &mut done {
        if d.is_err() {
            *d = Ok(0);
        }
    }
    let mut outstanding = queued;
    let mut submitted_any = false;
    while outstanding > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => submitted_any = true,
            Err(e) if transient(&e) => {}
            // io_uring_enter fails only when it took no entry in that call: if none was ever
            // taken, the queued entries are dropped with the ring by the caller.
            Err(e) if !submitted_any => return Err(e),
            Err(_) => std::thread::yield_now(),
        }
        for cqe in ring.completion() {
            let Some(slot) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| done.get_mut(i))
            else {
                continue;
            };
            *slot = usize::try_from(cqe.result()).map_err(|_| -cqe.result());
            outstanding -= 1;
        }
    }
    Ok(done)
}

/// Errors after which io_uring_enter is simply called again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EINTR | libc_errno::EAGAIN | libc_errno::EBUSY)
    )
}

/// The errno values `transient` compares (from rustix, to avoid a libc dependency here).
mod libc_errno {
    pub const EINTR: i32 = rustix::io::Errno::INTR.raw_os_error();
    pub const EAGAIN: i32 = rustix::io::Errno::AGAIN.raw_os_error();
    pub const EBUSY: i32 = rustix::io::Errno::BUSY.raw_os_error();
}

/// Complete the reads of `chunk` that the ring left short (a short read is legal), and keep
/// the first error.
fn finish(
    chunk: &mut [BatchRead<'_>],
    base: usize,
    done: &Outcome,
    first_err: &mut Option<BatchError>,
) {
    for (i, (r, d)) in chunk.iter_mut().zip(done).enumerate() {
        let result = match d {
            Ok(n) if *n >= r.buf.len() => Ok(()),
            Ok(n) => {
                let n = *n;
                let mut rest = BatchRead {
                    fd: r.fd,
                    offset: r.offset + n as u64,
                    buf: &mut r.buf[n..],
                };
                pread_all(&mut rest)
            }
            Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
        };
        if let (Err(error), None) = (result, &first_err) {
            *first_err = Some(BatchError {
                index: base + i,
                error,
            });
        }
    }
}

/// One read, to the end of its buffer, with pread.
fn pread_all(r: &mut BatchRead<'_>) -> io::Result<()> {
    let (mut at, mut buf) = (r.offset, &mut r.buf[..]);
    while !buf.is_empty() {
        match rustix::io::pread(r.fd, &mut *buf, at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ))
            }
            Ok(n) => {
                at += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn file_with(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"));
        f.write_all(&data).unwrap_or_else(|e| panic!("write: {e}"));
        (f, data)
    }

    #[test]
    fn many_reads_at_once_equal_the_file() {
        let (f, data) = file_with(1 << 20);
        let fd = f.as_file().as_fd();
        // More reads than the ring holds, of odd sizes and places, some overlapping.
        let places: Vec<(u64, usize)> = (0..150u64)
            .map(|i| ((i * 6151) % 1_000_000, 1 + (i as usize * 977) % 40_000))
            .collect();
        let mut bufs: Vec<Vec<u8>> = places.iter().map(|&(_, n)| vec![0u8; n]).collect();
        let mut reads: Vec<BatchRead<'_>> = places
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(offset, _), buf)| BatchRead { fd, offset, buf })
            .collect();
        read_all(&mut reads).unwrap_or_else(|e| panic!("read_all: {e:?}"));
        drop(reads);
        for ((offset, n), buf) in places.iter().zip(&bufs) {
            let at = *offset as usize;
            assert_eq!(&data[at..at + n], &buf[..], "read at {offset}");
        }
    }

    #[test]
    fn a_read_past_the_end_fails_and_the_others_complete() {
        let (f, data) = file_with(64 << 10);
        let fd = f.as_file().as_fd();
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 8192], vec![0u8; 4096]);
        let mut reads = vec![
            BatchRead {
                fd,
                offset: 0,
                buf: &mut a,
            },
            BatchRead {
                fd,
                offset: 60 << 10,
                buf: &mut b,
            },
            BatchRead {
                fd,
                offset: 8192,
                buf: &mut c,
            },
        ];
        let err = read_all(&mut reads)
            .err()
            .map(|e| (e.index, e.error.kind()));
        assert_eq!(err, Some((1, io::ErrorKind::UnexpectedEof)));
        drop(reads);
        assert_eq!(&a[..], &data[..4096]);
        assert_eq!(&c[..], &data[8192..12288]);
        assert_eq!(
            &b[..4096],
            &data[60 << 10..],
            "the part before the end is read"
        );
    }
}
