//! Regular files and raw block devices, with pread/pwrite and optional O_DIRECT.

use super::aligned::{is_aligned, AlignedBuf, DIRECT_ALIGN};
use super::create::{create_fresh, same_file, CreatedFile};
use super::holes::Holes;
use super::reserve::Reserved;
use super::BlockDevice;
use rustix::fs::{FallocateFlags, FlockOperation, OFlags};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The smallest read that [`OpenOptions::direct_reads`] sends with O_DIRECT. Below it the
/// page-cache copy costs little beside the system call, while a direct read holds the inode
/// lock shared on ext4 (buffered reads take none), so small direct reads would stall page-cache
/// writes to the same file, such as the pre-image read and write of a first overwrite.
pub const DIRECT_READ_MIN: usize = 64 << 10;

/// The smallest write that [`OpenOptions::direct_large`] sends with O_DIRECT. A page-cache
/// write returns after a copy, a direct one after the disk: only large writes, whose copy
/// costs about what the disk does, gain (FUSE splits writes into 128 KiB requests, which
/// then stay cached).
pub const DIRECT_WRITE_MIN: usize = 256 << 10;

/// How to open a [`FileDevice`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open read-only.
    pub read_only: bool,
    /// Use O_DIRECT for aligned transfers (unaligned ones go through the page cache, which the
    /// kernel keeps coherent with direct I/O by writing back before each direct transfer).
    pub direct: bool,
    /// Use O_DIRECT for aligned reads of at least [`DIRECT_READ_MIN`] bytes only; writes and
    /// smaller reads go through the page cache. Reads stay coherent with those writes because
    /// the kernel writes back the dirty pages of a range before a direct read of it. `direct`
    /// overrides it.
    pub direct_reads: bool,
    /// As `direct_reads`, and aligned writes of at least [`DIRECT_WRITE_MIN`] bytes go
    /// O_DIRECT too (the kernel writes back and drops the cached pages of their range first);
    /// small writes stay in the page cache, where they are cheapest. The page cache then reads
    /// nothing ahead (`POSIX_FADV_RANDOM`): only small, random reads reach it.
    pub direct_large: bool,
    /// Hold the device exclusively: flock on a regular file, O_EXCL on a block device.
    pub exclusive: bool,
    /// Create a regular file of this many bytes (sparse) if it does not exist.
    pub create_len: Option<u64>,
    /// Create the file fresh: fail if anything is at the path already, even a dangling
    /// symbolic link (O_CREAT | O_EXCL | O_NOFOLLOW, through the parent directory). For files
    /// fss makes in directories others may write to, where a planted link would redirect the
    /// write. A file made this way is removed again if sizing it fails. Its length is
    /// `create_len` (0 when unset).
    pub create_new: bool,
}

/// The mode of every file fss creates: volume data and pre-images are nobody else's business,
/// whatever the umask.
pub const FILE_MODE: u32 = 0o600;

/// A regular file or a raw block device.
#[derive(Debug)]
pub struct FileDevice {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    /// Whether writes use `direct` too (otherwise only reads do).
    direct_writes: bool,
    /// Whether large aligned writes use `direct` (small ones stay in the page cache).
    direct_large_writes: bool,
    is_block: bool,
    len: AtomicU64,
    /// Allocation lookups, with the last run of data found.
    holes: Holes,
    /// Room allocated ahead of writers ([`BlockDevice::reserve`]).
    reserved: Reserved,
}

impl FileDevice {
    /// Open `path` as a device.
    ///
    /// # Errors
    /// The open, the lock (another process holds it: `WouldBlock`), or reading the size failed.
    pub fn open(path: &Path, opts: &OpenOptions) -> io::Result<Self> {
        let is_block = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let mut flags = OFlags::CLOEXEC;
        if opts.exclusive && is_block {
            // O_EXCL without O_CREAT on a block device: fails with EBUSY if it is mounted or
            // held exclusively by anyone else.
            flags |= OFlags::EXCL;
        }
        let base = || {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(!opts.read_only).mode(FILE_MODE);
            if opts.create_len.is_some() && !is_block && !opts.create_new {
                o.create(true);
            }
            o
        };
        let file = if opts.create_new {
            create_fresh(path, opts.read_only)?
        } else {
            base().custom_flags(flag_bits(flags)).open(path)?
        };
        let removal = CreatedFile(opts.create_new.then_some(path));
        if opts.exclusive && !is_block {
            rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is in use by another process (locked)", path.display()),
                    )
                } else {
                    e.into()
                }
            })?;
        }
        let mut len = device_len(&file, is_block)?;
        if let Some(want) = opts.create_len {
            if !is_block && len == 0 && want > 0 {
                file.set_len(want)?;
                len = want;
            }
        }
        let direct = if opts.direct || opts.direct_reads || opts.direct_large {
            // Reopened by path: a link swapped in since must not be followed, and it must be
            // the same file.
            let nofollow = if opts.create_new {
                OFlags::NOFOLLOW
            } else {
                OFlags::empty()
            };
            match base()
                .custom_flags(flag_bits(OFlags::CLOEXEC | OFlags::DIRECT | nofollow))
                .open(path)
            {
                Ok(d) => {
                    same_file(&file, &d, path)?;
                    Some(d)
                }
                // A file system without O_DIRECT: the page cache serves every transfer,
                // which only `direct` asks for explicitly.
                Err(e) if !opts.direct && e.raw_os_error() == Some(libc_einval()) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if opts.direct_large && !opts.direct && direct.is_some() {
            // The page cache now serves only reads under DIRECT_READ_MIN, which are random in
            // practice (clients read ahead themselves, in large requests). For 4 KiB random
            // reads the kernel's readahead read twice the bytes asked (bench case 1: 330 MB/s
            // from the disk for 160 MB/s served) and cost 10% of the IOPS; qemu-nbd reads
            // none ahead either. Advice only: if refused, only speed differs.
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        }
        removal.keep();
        Ok(FileDevice {
            path: path.to_path_buf(),
            file,
            direct,
            direct_writes: opts.direct,
            direct_large_writes: opts.direct_large,
            is_block,
            len: AtomicU64::new(len),
            holes: Holes::default(),
            reserved: Reserved::default(),
        })
    }

    /// The path this device was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a raw block device (fixed size) rather than a regular file.
    #[must_use]
    pub fn is_block_device(&self) -> bool {
        self.is_block
    }

    /// Grow or shrink a regular file (stores grow on demand). Block devices cannot.
    ///
    /// # Errors
    /// The device is a block device, or the truncate failed.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        if self.is_block {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a raw block device has a fixed size",
            ));
        }
        self.file.set_len(len)?;
        self.holes.forget();
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    /// The file to use for a transfer: the O_DIRECT one when everything is aligned (and, for
    /// a write, when writes are direct at all).
    fn direct_for(&self, offset: u64, len: usize, write: bool) -> Option<&File> {
        // Direct writes mean `direct`: everything aligned goes direct. Otherwise only reads
        // large enough to be worth it do.
        if !self.direct_writes
            && (len < DIRECT_READ_MIN
                || (write && (!self.direct_large_writes || len < DIRECT_WRITE_MIN)))
        {
            return None;
        }
        let d = self.direct.as_ref()?;
        (offset % DIRECT_ALIGN as u64 == 0 && len % DIRECT_ALIGN == 0 && len > 0).then_some(d)
    }
}

fn flag_bits(f: OFlags) -> i32 {
    i32::try_from(f.bits()).unwrap_or(0)
}

fn device_len(file: &File, is_block: bool) -> io::Result<u64> {
    if is_block {
        use std::io::Seek;
        // The size of a block device is where its end is; metadata says 0.
        let mut f = file;
        f.seek(io::SeekFrom::End(0))
    } else {
        Ok(file.metadata()?.len())
    }
}

impl BlockDevice for FileDevice {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.direct_for(offset, buf.len(), false) {
            Some(d) if is_aligned(buf) => d.read_exact_at(buf, offset),
            Some(d) => {
                let mut b = AlignedBuf::new(buf.len());
                d.read_exact_at(&mut b, offset)?;
                buf.copy_from_slice(&b);
                Ok(())
            }
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct_writes {
            // Fully direct: keep the page cache out of it.
            return self.read_at(buf, offset);
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct_writes {
            return self.write_at(buf, offset);
        }
        self.file.write_all_at(buf, offset)?;
        if !self.is_block {
            self.len
                .fetch_max(offset + buf.len() as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.direct_for(offset, buf.len(), true) {
            Some(d) if is_aligned(buf) => d.write_all_at(buf, offset)?,
            Some(d) => {
                let mut b = AlignedBuf::new(buf.len());
                b.copy_from_slice(buf);
                d.write_all_at(&b, offset)?;
            }
            None => self.file.write_all_at(buf, offset)?,
        }
        if !self.is_block {
            self.len
                .fetch_max(offset + buf.len() as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    fn read_source(&self, offset: u64, buf: &[u8]) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let aligned = offset % DIRECT_ALIGN as u64 == 0
            && buf.len() % DIRECT_ALIGN == 0
            && !buf.is_empty()
            && is_aligned(buf);
        match &self.direct {
            // Batched reads are many and in flight together: direct ones go straight to the
            // caller's buffer with no readahead to waste on scattered pieces.
            Some(d) if aligned => Some(d.as_fd()),
            // Fully direct and unaligned: `read_at` bounces through an aligned buffer.
            _ if self.direct_writes => None,
            _ => Some(self.file.as_fd()),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // Works on regular files (hole punching) and on block devices (BLKDISCARD inside).
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(io::Error::from)?;
        self.holes.forget();
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            // Zeroed ranges may read back as holes (unwritten extents).
            Ok(()) => {
                self.holes.forget();
                Ok(())
            }
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                super::write_zero_buffers(self, offset, len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn reserve(&self, end: u64, cap: u64) {
        if self.is_block {
            return;
        }
        if let Some(len) = self.reserved.grow(&self.file, self.len(), end, cap) {
            self.holes.forget();
            self.len.fetch_max(len, Ordering::AcqRel);
        }
    }

    fn space_available(&self) -> io::Result<Option<u64>> {
        if self.is_block {
            return Ok(None);
        }
        let st = rustix::fs::fstatvfs(&self.file)?;
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<super::Extent>> {
        if self.is_block {
            return Ok(vec![super::Extent {
                offset,
                len,
                data: true,
            }]);
        }
        self.holes.extents(&self.file, offset, len)
    }
}

/// EINVAL, the error of an O_DIRECT open on a file system without it.
fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn create_sparse_read_write_punch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let opts = OpenOptions {
            create_len: Some(1 << 20),
            ..Default::default()
        };
        let d = FileDevice::open(&p, &opts).unwrap();
        assert_eq!(d.len(), 1 << 20);
        let data = pattern(10_000, 3);
        d.write_at(&data, 12_345).unwrap();
        let mut back = vec![0u8; 10_000];
        d.read_at(&mut back, 12_345).unwrap();
        assert_eq!(back, data);
        d.discard(8192, 8192).unwrap();
        d.write_zeroes(20_000, 100).unwrap();
        d.read_at(&mut back, 12_345).unwrap();
        assert!(back[..(16_384 - 12_345)].iter().all(|&b| b == 0));
        assert_eq!(
            back[(16_384 - 12_345)..(20_000 - 12_345)],
            data[(16_384 - 12_345)..(20_000 - 12_345)]
        );
        assert!(back[(20_000 - 12_345)..(20_100 - 12_345)]
            .iter()
            .all(|&b| b == 0));
        d.flush().unwrap();
    }

    /// A 1 MiB file device in a fresh temporary directory, opened with `opts` (which ask for
    /// O_DIRECT). O_DIRECT needs a real file system (not tmpfs): fail loudly rather than skip.
    fn direct_device(name: &str, opts: OpenOptions) -> (tempfile::TempDir, FileDevice) {
        let dir = tempfile::tempdir().unwrap();
        let opts = OpenOptions {
            create_len: Some(1 << 20),
            ..opts
        };
        let d = FileDevice::open(&dir.path().join(name), &opts)
            .expect("O_DIRECT open in a temporary directory");
        (dir, d)
    }

    #[test]
    fn direct_io_aligned_and_unaligned_agree() {
        let (_dir, d) = direct_device(
            "d.img",
            OpenOptions {
                direct: true,
                ..Default::default()
            },
        );
        let data = pattern(3 * 4096, 7);
        d.write_at(&data, 4096).unwrap();
        d.write_at(&[0xAB; 3], 4097).unwrap();
        let mut back = vec![0u8; 3 * 4096];
        d.read_at(&mut back, 4096).unwrap();
        let mut want = data.clone();
        want[1..4].fill(0xAB);
        assert_eq!(back, want);
        let mut odd = vec![0u8; 5];
        d.read_at(&mut odd, 4096 + 2).unwrap();
        assert_eq!(odd, want[2..7]);
    }

    #[test]
    fn direct_reads_see_buffered_writes() {
        let (_dir, d) = direct_device(
            "r.img",
            OpenOptions {
                direct_reads: true,
                ..Default::default()
            },
        );
        // Buffered writes (still dirty in the page cache), then aligned direct reads into an
        // aligned buffer and an unaligned one (bounced): both must see the new bytes.
        let n = DIRECT_READ_MIN;
        let data = pattern(n, 9);
        d.write_at(&data, 8192).unwrap();
        d.write_at(&[0xCD; 7], 8192 + 100).unwrap();
        let mut want = data.clone();
        want[100..107].fill(0xCD);
        let mut aligned = AlignedBuf::new(n);
        d.read_at(&mut aligned, 8192).unwrap();
        assert_eq!(&aligned[..], &want[..]);
        let mut raw = vec![0u8; n + 1];
        d.read_at(&mut raw[1..], 8192).unwrap();
        assert_eq!(&raw[1..], &want[..]);
        let mut small = AlignedBuf::new(4096);
        d.read_at(&mut small, 8192).unwrap();
        assert_eq!(&small[..], &want[..4096]);
        let mut odd = vec![0u8; 3];
        d.read_at(&mut odd, 8192 + 99).unwrap();
        assert_eq!(odd, want[99..102]);
    }

    #[test]
    fn large_direct_writes_and_small_cached_ones_see_each_other() {
        let (_dir, d) = direct_device(
            "w.img",
            OpenOptions {
                direct_large: true,
                ..Default::default()
            },
        );
        let n = DIRECT_WRITE_MIN;
        // A small write (page cache, dirty), then a large direct write over it, then a small
        // write inside that: every read, cached or direct, sees the last bytes.
        d.write_at(&[0x11; 4096], 8192).unwrap();
        let big = pattern(n, 3);
        d.write_at(&big, 8192).unwrap();
        let mut want = big.clone();
        d.write_at(&[0x22; 10], 8192 + 4000).unwrap();
        want[4000..4010].fill(0x22);
        let mut aligned = AlignedBuf::new(n);
        d.read_at(&mut aligned, 8192).unwrap();
        assert_eq!(&aligned[..], &want[..]);
        let mut cached = vec![0u8; n];
        d.read_at_cached(&mut cached, 8192).unwrap();
        assert_eq!(cached, want);
        // A large direct write over cached pages replaces them for cached readers too.
        let big2 = pattern(n, 4);
        d.write_at(&big2, 8192).unwrap();
        d.read_at_cached(&mut cached, 8192).unwrap();
        assert_eq!(cached, big2);
    }

    #[test]
    fn allocation_reports_holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let d = FileDevice::open(
            &p,
            &OpenOptions {
                create_len: Some(16 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        d.write_at(&[1; 4096], 8 << 20).unwrap();
        let ext = d.allocation(0, 16 << 20).unwrap();
        let data: Vec<_> = ext.iter().filter(|e| e.data).collect();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 16 << 20);
        assert!(data
            .iter()
            .any(|e| e.offset <= 8 << 20 && e.offset + e.len >= (8 << 20) + 4096));
        assert!(
            data.iter().map(|e| e.len).sum::<u64>() < 16 << 20,
            "{ext:?}"
        );
    }

    #[test]
    fn exclusive_open_is_refused_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let opts = OpenOptions {
            create_len: Some(4096),
            exclusive: true,
            ..Default::default()
        };
        let _a = FileDevice::open(&p, &opts).unwrap();
        let e = FileDevice::open(&p, &opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("in use"));
    }

    #[test]
    fn short_file_read_fails_not_short_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.img");
        let d = FileDevice::open(
            &p,
            &OpenOptions {
                create_len: Some(100),
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = [0u8; 50];
        assert!(d.read_at(&mut buf, 80).is_err());
    }
}
