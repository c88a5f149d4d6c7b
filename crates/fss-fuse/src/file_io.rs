//! What reads, writes, fsync, fallocate and lseek do to an export, as files of fixed size
//! behave: reads past the end are short, writes cannot grow the file (a block device cannot),
//! snapshots refuse every change with EROFS. Engine errors become their
//! [`errno`](fss_core::Error::errno).

use fss_core::export::Export;
use rustix::fs::FallocateFlags;
use rustix::io::Errno;

/// `lseek` whence values the kernel forwards to the file system.
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

/// How much of the device one allocation query covers while seeking data or holes.
const SEEK_WINDOW: u64 = 1 << 30;

/// The errno for an engine error.
pub fn errno(e: &fss_core::Error) -> Errno {
    Errno::from_raw_os_error(e.errno())
}

/// Read into `buf` from `offset`; returns how many bytes are valid: fewer than asked at the
/// end of the device, none past it.
pub fn read(export: &Export, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    let n = readable(export, offset, buf.len());
    if n > 0 {
        export.read(&mut buf[..n], offset).map_err(|e| errno(&e))?;
    }
    Ok(n)
}

/// How many of `size` bytes at `offset` a read gives: fewer at the end of the device, none
/// past it.
pub fn readable(export: &Export, offset: u64, size: usize) -> usize {
    export.len().checked_sub(offset).map_or(0, |rest| {
        usize::try_from(rest).map_or(size, |rest| rest.min(size))
    })
}

/// Write `data` at `offset`; returns how many bytes were written: a write that crosses the end
/// is short, one that starts at or past it fails with ENOSPC, as on a block device.
pub fn write(export: &Export, offset: u64, data: &[u8]) -> Result<u32, Errno> {
    if export.is_read_only() {
        return Err(Errno::ROFS);
    }
    if data.is_empty() {
        return Ok(0);
    }
    let len = export.len();
    if offset >= len {
        return Err(Errno::NOSPC);
    }
    let n = usize::try_from(len - offset).map_or(data.len(), |rest| rest.min(data.len()));
    let written = u32::try_from(n).map_err(|_| Errno::INVAL)?;
    export.write(&data[..n], offset).map_err(|e| errno(&e))?;
    Ok(written)
}

/// Make completed writes durable (the device's FLUSH); nothing to do on a snapshot.
pub fn fsync(export: &Export) -> Result<(), Errno> {
    export.flush().map_err(|e| errno(&e))
}

/// `fallocate(2)`: punching a hole discards, zeroing a range writes zeroes, plain allocation
/// within the size succeeds without doing anything; the size never changes.
pub fn fallocate(export: &Export, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
    if export.is_read_only() {
        return Err(Errno::ROFS);
    }
    let flags = u32::try_from(mode)
        .ok()
        .and_then(FallocateFlags::from_bits)
        .ok_or(Errno::OPNOTSUPP)?;
    let keep_size = flags.contains(FallocateFlags::KEEP_SIZE);
    let size = export.len();
    let end = offset.checked_add(length).ok_or(Errno::FBIG)?;
    let grows = end > size;
    // The part of the range inside the device.
    let inside = (offset < size).then(|| (offset, end.min(size) - offset));
    let op = flags - FallocateFlags::KEEP_SIZE;
    if op.is_empty() {
        // Allocation: every byte of a device is already there.
        return if grows && !keep_size {
            Err(Errno::FBIG)
        } else {
            Ok(())
        };
    }
    let result = if op == FallocateFlags::PUNCH_HOLE && keep_size {
        inside.map(|(o, l)| export.discard(o, l))
    } else if op == FallocateFlags::ZERO_RANGE {
        if grows && !keep_size {
            return Err(Errno::FBIG);
        }
        inside.map(|(o, l)| export.write_zeroes(o, l))
    } else {
        return Err(Errno::OPNOTSUPP);
    };
    result.unwrap_or(Ok(())).map_err(|e| errno(&e))
}

/// `lseek(2)` with SEEK_DATA or SEEK_HOLE (the kernel handles the other kinds itself).
pub fn seek(export: &Export, offset: i64, whence: i32) -> Result<i64, Errno> {
    let want_data = match whence {
        SEEK_DATA => true,
        SEEK_HOLE => false,
        _ => return Err(Errno::INVAL),
    };
    let size = export.len();
    let start = u64::try_from(offset).map_err(|_| Errno::NXIO)?;
    if start >= size {
        return Err(Errno::NXIO);
    }
    let mut at = start;
    while at < size {
        let window = SEEK_WINDOW.min(size - at);
        let extents = export.allocation(at, window).map_err(|e| errno(&e))?;
        if let Some(e) = extents.iter().find(|e| e.data == want_data) {
            return i64::try_from(e.offset.max(start)).map_err(|_| Errno::OVERFLOW);
        }
        at += window;
    }
    if want_data {
        Err(Errno::NXIO)
    } else {
        // Every file has an implicit hole at its end.
        i64::try_from(size).map_err(|_| Errno::OVERFLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::device::MemDevice;
    use fss_core::store::DeviceStore;
    use fss_core::{SnapshotOptions, Volume};
    use std::sync::Arc;

    const PUNCH: i32 = 0x02 | 0x01;
    const ZERO: i32 = 0x10;

    fn volume(len: u64) -> Volume {
        Volume::new("v", Arc::new(MemDevice::new(len)))
    }

    #[test]
    fn reads_are_short_at_the_end_and_empty_past_it() {
        let v = volume(10_000);
        v.write(&[7; 100], 9_900).unwrap();
        let e = Export::Volume(v);
        let mut buf = vec![0u8; 4096];
        assert_eq!(read(&e, 9_950, &mut buf).unwrap(), 50);
        assert!(buf[..50].iter().all(|&b| b == 7));
        assert_eq!(read(&e, 10_000, &mut buf).unwrap(), 0);
        assert_eq!(read(&e, u64::MAX, &mut buf).unwrap(), 0);
        assert_eq!(read(&e, 1, &mut buf[..3]).unwrap(), 3);
    }

    #[test]
    fn writes_never_grow_the_device() {
        let e = Export::Volume(volume(10_000));
        assert_eq!(write(&e, 9_998, &[1, 2, 3, 4]).unwrap(), 2);
        assert_eq!(write(&e, 10_000, &[1]), Err(Errno::NOSPC));
        assert_eq!(write(&e, u64::MAX, &[1]), Err(Errno::NOSPC));
        assert_eq!(write(&e, 10_000, &[]).unwrap(), 0);
        assert_eq!(write(&e, 3, &[9; 5]).unwrap(), 5);
        let mut buf = [0u8; 8];
        read(&e, 2, &mut buf).unwrap();
        assert_eq!(buf, [0, 9, 9, 9, 9, 9, 0, 0]);
    }

    #[test]
    fn snapshots_refuse_changes() {
        let v = volume(1 << 20);
        v.write(&[5; 4096], 0).unwrap();
        let s = v
            .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
            .unwrap();
        let e = Export::Snapshot(s);
        assert_eq!(write(&e, 0, &[1]), Err(Errno::ROFS));
        assert_eq!(fallocate(&e, 0, 4096, PUNCH), Err(Errno::ROFS));
        assert_eq!(fallocate(&e, 0, 4096, ZERO), Err(Errno::ROFS));
        assert_eq!(fallocate(&e, 0, 4096, 0), Err(Errno::ROFS));
        fsync(&e).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(read(&e, 0, &mut buf).unwrap(), 4096);
        assert_eq!(buf, [5; 4096]);
    }

    #[test]
    fn fallocate_modes() {
        let v = volume(1 << 20);
        v.write(&vec![3; 1 << 20], 0).unwrap();
        let e = Export::Volume(v);
        // Punch an unaligned range, partly past the end.
        fallocate(&e, 1000, 5000, PUNCH).unwrap();
        fallocate(&e, (1 << 20) - 10, 100, PUNCH).unwrap();
        fallocate(&e, 1 << 21, 100, PUNCH).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        read(&e, 0, &mut buf).unwrap();
        assert!(buf[..1000].iter().all(|&b| b == 3));
        assert!(buf[1000..6000].iter().all(|&b| b == 0));
        assert!(buf[6000..(1 << 20) - 10].iter().all(|&b| b == 3));
        assert!(buf[(1 << 20) - 10..].iter().all(|&b| b == 0));
        // Zero a range (with and without KEEP_SIZE inside the size).
        fallocate(&e, 8192, 4096, ZERO).unwrap();
        fallocate(&e, 20_000, 10, ZERO | 0x01).unwrap();
        read(&e, 0, &mut buf).unwrap();
        assert!(buf[8192..12288].iter().all(|&b| b == 0));
        assert!(buf[20_000..20_010].iter().all(|&b| b == 0));
        assert_eq!(buf[12288], 3);
        assert_eq!(buf[20_010], 3);
        // Zeroing or allocating past the end without KEEP_SIZE would grow the file.
        assert_eq!(fallocate(&e, (1 << 20) - 1, 2, ZERO), Err(Errno::FBIG));
        assert_eq!(fallocate(&e, 0, (1 << 20) + 1, 0), Err(Errno::FBIG));
        assert_eq!(fallocate(&e, u64::MAX, 2, 0), Err(Errno::FBIG));
        // Allocation inside the size, or with KEEP_SIZE, does nothing and succeeds.
        fallocate(&e, 0, 1 << 20, 0).unwrap();
        fallocate(&e, 0, 1 << 22, 0x01).unwrap();
        // Anything else is not supported: collapse, insert, unshare, a punch without
        // KEEP_SIZE, unknown bits.
        for mode in [0x08, 0x20, 0x40, 0x02, 0x02 | 0x10 | 0x01, 1 << 20, -1] {
            assert_eq!(
                fallocate(&e, 0, 4096, mode),
                Err(Errno::OPNOTSUPP),
                "{mode:#x}"
            );
        }
    }

    #[test]
    fn seek_data_and_holes() {
        let v = volume(1 << 20);
        // Memory devices allocate in 64 KiB pages.
        v.write(&[1; 4096], 131_072).unwrap();
        let e = Export::Volume(v);
        assert_eq!(seek(&e, 100, SEEK_DATA).unwrap(), 131_072);
        assert_eq!(seek(&e, 140_000, SEEK_DATA).unwrap(), 140_000);
        assert_eq!(seek(&e, 100, SEEK_HOLE).unwrap(), 100);
        assert_eq!(seek(&e, 131_072, SEEK_HOLE).unwrap(), 196_608);
        assert_eq!(seek(&e, 196_608, SEEK_DATA), Err(Errno::NXIO));
        assert_eq!(seek(&e, 1 << 20, SEEK_DATA), Err(Errno::NXIO));
        assert_eq!(seek(&e, -1, SEEK_HOLE), Err(Errno::NXIO));
        assert_eq!(seek(&e, 0, 0), Err(Errno::INVAL));
    }
}
