#![allow(clippy::unwrap_used)]

use super::*;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

fn sample_attr() -> Attr {
    Attr {
        ino: 42,
        size: 1 << 30,
        blocks: (1 << 30) / 512,
        time: Timestamp {
            secs: 1_700_000_000,
            nsecs: 123,
        },
        mode: abi::S_IFREG | 0o600,
        nlink: 1,
        uid: 0,
        gid: 5,
        blksize: 4096,
    }
}

/// Offsets of `struct fuse_attr` fields.
fn check_attr(b: &[u8], a: &Attr) {
    assert_eq!(b.len(), size::ATTR);
    assert_eq!(u64_at(b, 0), a.ino);
    assert_eq!(u64_at(b, 8), a.size);
    assert_eq!(u64_at(b, 16), a.blocks);
    for t in [24, 32, 40] {
        assert_eq!(u64_at(b, t), a.time.secs);
    }
    for n in [48, 52, 56] {
        assert_eq!(u32_at(b, n), a.time.nsecs);
    }
    assert_eq!(u32_at(b, 60), a.mode);
    assert_eq!(u32_at(b, 64), a.nlink);
    assert_eq!(u32_at(b, 68), a.uid);
    assert_eq!(u32_at(b, 72), a.gid);
    assert_eq!(u32_at(b, 76), 0, "rdev");
    assert_eq!(u32_at(b, 80), a.blksize);
    assert_eq!(u32_at(b, 84), 0, "flags");
}

#[test]
fn out_header_layout() {
    let h = out_header(100, -5, 7 | abi::UNIQUE_RESEND);
    assert_eq!(u32_at(&h, 0), 116);
    assert_eq!(i32::from_ne_bytes(h[4..8].try_into().unwrap()), -5);
    assert_eq!(u64_at(&h, 8), 7 | abi::UNIQUE_RESEND);
    let n = notify_resend();
    assert_eq!(u32_at(&n, 0), 16);
    assert_eq!(u32_at(&n, 4), 7);
    assert_eq!(u64_at(&n, 8), 0);
}

#[test]
fn entry_and_attr_replies() {
    let a = sample_attr();
    let e = entry_out(&a);
    assert_eq!(e.len(), size::ENTRY_OUT);
    assert_eq!(u64_at(&e, 0), 42, "nodeid");
    assert!(e[8..40].iter().all(|&b| b == 0), "generation and validity");
    check_attr(&e[40..], &a);
    let o = attr_out(&a);
    assert_eq!(o.len(), size::ATTR_OUT);
    assert!(o[..16].iter().all(|&b| b == 0));
    check_attr(&o[16..], &a);
}

#[test]
fn small_replies() {
    let o = open_out(9, abi::FOPEN_DIRECT_IO | abi::FOPEN_PARALLEL_DIRECT_WRITES);
    assert_eq!(o.len(), size::OPEN_OUT);
    assert_eq!(u64_at(&o, 0), 9);
    assert_eq!(u32_at(&o, 8), 0x41);
    assert_eq!(u32_at(&o, 12), 0);
    let w = write_out(4096);
    assert_eq!(w, [&4096u32.to_ne_bytes()[..], &[0; 4]].concat());
    assert_eq!(lseek_out(-2), (-2i64).to_ne_bytes());
    let s = statfs_out(&StatFs {
        blocks: 10,
        files: 3,
        bsize: 4096,
        namelen: 255,
        frsize: 512,
    });
    assert_eq!(s.len(), size::KSTATFS);
    assert_eq!(
        [
            u64_at(&s, 0),
            u64_at(&s, 8),
            u64_at(&s, 16),
            u64_at(&s, 24),
            u64_at(&s, 32)
        ],
        [10, 0, 0, 3, 0]
    );
    assert_eq!(
        [u32_at(&s, 40), u32_at(&s, 44), u32_at(&s, 48)],
        [4096, 255, 512]
    );
    assert!(s[52..].iter().all(|&b| b == 0));
}

#[test]
fn init_reply_layout() {
    let i = InitOut {
        major: 7,
        minor: 40,
        max_readahead: 131_072,
        flags: (1 << 39) | (1 << 15) | 1,
        max_background: 64,
        congestion_threshold: 48,
        max_write: 131_072,
        time_gran: 1,
        max_pages: 32,
    };
    let b = init_out(&i);
    assert_eq!(b.len(), size::INIT_OUT);
    assert_eq!(
        [u32_at(&b, 0), u32_at(&b, 4), u32_at(&b, 8)],
        [7, 40, 131_072]
    );
    assert_eq!(u32_at(&b, 12), (1 << 15) | 1);
    assert_eq!(u16::from_ne_bytes([b[16], b[17]]), 64);
    assert_eq!(u16::from_ne_bytes([b[18], b[19]]), 48);
    assert_eq!([u32_at(&b, 20), u32_at(&b, 24)], [131_072, 1]);
    assert_eq!(u16::from_ne_bytes([b[28], b[29]]), 32);
    assert_eq!(u32_at(&b, 32), 1 << 7, "flags2");
    assert!(b[36..].iter().all(|&x| x == 0));
}

#[test]
fn directory_entries_are_padded_and_bounded() {
    let mut d = DirBuf::new(24 + 8 + 24 + 8 + 8);
    assert!(d.add(1, 1, abi::DT_DIR, b"."));
    assert!(d.add(7, 2, abi::DT_REG, b"vol0"));
    // 24 + 9 = 33 -> 40 bytes: does not fit in what is left (16).
    assert!(!d.add(8, 3, abi::DT_REG, b"snapshot1"));
    let b = d.into_bytes();
    assert_eq!(b.len(), 64);
    assert_eq!([u64_at(&b, 0), u64_at(&b, 8)], [1, 1]);
    assert_eq!([u32_at(&b, 16), u32_at(&b, 20)], [1, abi::DT_DIR]);
    assert_eq!(&b[24..32], b".\0\0\0\0\0\0\0");
    assert_eq!([u64_at(&b, 32), u64_at(&b, 40)], [7, 2]);
    assert_eq!([u32_at(&b, 48), u32_at(&b, 52)], [4, abi::DT_REG]);
    assert_eq!(&b[56..64], b"vol0\0\0\0\0");
    assert!(DirBuf::new(0).into_bytes().is_empty());
}

#[test]
fn timestamps_from_system_time() {
    let t = UNIX_EPOCH + std::time::Duration::new(5, 6);
    assert_eq!(Timestamp::from(t), Timestamp { secs: 5, nsecs: 6 });
    let before = UNIX_EPOCH - std::time::Duration::from_secs(1);
    assert_eq!(Timestamp::from(before), Timestamp::default());
}
