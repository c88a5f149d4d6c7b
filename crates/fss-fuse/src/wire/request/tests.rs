#![allow(clippy::unwrap_used)]

use super::*;
use crate::wire::abi::init_flags;

/// A request as the kernel lays it out.
fn req(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(size::IN_HEADER + body.len()).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&opcode.to_ne_bytes());
    v.extend_from_slice(&unique.to_ne_bytes());
    v.extend_from_slice(&nodeid.to_ne_bytes());
    v.extend_from_slice(&1000u32.to_ne_bytes());
    v.extend_from_slice(&1001u32.to_ne_bytes());
    v.extend_from_slice(&4242u32.to_ne_bytes());
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(body);
    v
}

/// Fields in order, for request bodies.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn op(buf: &[u8]) -> Operation<'_> {
    parse(buf).unwrap().op
}

fn body_err(buf: &[u8]) -> Errno {
    match parse(buf) {
        Err(ParseError::Body(_, e)) => e,
        other => panic!("expected a body error, got {other:?}"),
    }
}

#[test]
fn header_fields_and_resend_bit() {
    let buf = req(opcode::STATFS, 7 | abi::UNIQUE_RESEND, 1, &[]);
    let r = parse(&buf).unwrap();
    assert_eq!(
        r.header,
        InHeader {
            len: 40,
            opcode: opcode::STATFS,
            unique: 7 | abi::UNIQUE_RESEND,
            nodeid: 1,
            uid: 1000,
            gid: 1001,
            pid: 4242,
            total_extlen: 0,
        }
    );
    assert!(r.header.is_resend());
    assert_eq!(r.op, Operation::StatFs);
    assert!(!parse(&req(opcode::STATFS, 8, 1, &[]))
        .unwrap()
        .header
        .is_resend());
}

#[test]
fn short_reads_and_wrong_lengths() {
    let buf = req(opcode::STATFS, 2, 1, &[]);
    assert_eq!(parse(&buf[..39]), Err(ParseError::Header(ShortHeader(39))));
    assert_eq!(parse(&[]), Err(ParseError::Header(ShortHeader(0))));
    // The header says more (or less) than was read.
    let mut long = buf.clone();
    long.push(0);
    assert_eq!(body_err(&long), Errno::IO);
    let mut lying = buf.clone();
    lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert_eq!(body_err(&lying), Errno::IO);
    // Extensions longer than the request.
    let mut ext = buf;
    ext[36..38].copy_from_slice(&1u16.to_ne_bytes());
    assert_eq!(body_err(&ext), Errno::IO);
}

#[test]
fn extensions_are_cut_off_the_arguments() {
    let mut buf = req(opcode::LOOKUP, 2, 1, b"vol\0\0\0\0\0\0\0\0\0");
    buf[36..38].copy_from_slice(&1u16.to_ne_bytes());
    assert_eq!(op(&buf), Operation::Lookup { name: b"vol" });
}

#[test]
fn lookup_names() {
    assert_eq!(
        op(&req(opcode::LOOKUP, 2, 1, b"fss0\0")),
        Operation::Lookup { name: b"fss0" }
    );
    assert_eq!(body_err(&req(opcode::LOOKUP, 2, 1, b"fss0")), Errno::INVAL);
    assert_eq!(
        op(&req(opcode::LOOKUP, 2, 1, b"\0")),
        Operation::Lookup { name: b"" }
    );
}

#[test]
fn getattr_with_and_without_a_handle() {
    let with = Body::default().u32(abi::GETATTR_FH).u32(0).u64(9);
    assert_eq!(
        op(&req(opcode::GETATTR, 2, 5, &with.0)),
        Operation::GetAttr { fh: Some(9) }
    );
    let without = Body::default().u32(0).u32(0).u64(9);
    assert_eq!(
        op(&req(opcode::GETATTR, 2, 5, &without.0)),
        Operation::GetAttr { fh: None }
    );
    assert_eq!(
        body_err(&req(opcode::GETATTR, 2, 5, &without.0[..15])),
        Errno::INVAL
    );
}

#[test]
fn setattr_fields() {
    let b = Body::default()
        .u32(abi::fattr::SIZE | abi::fattr::MODE)
        .u32(0)
        .u64(3) // fh
        .u64(12345) // size
        .u64(0) // lock_owner
        .u64(1)
        .u64(2)
        .u64(3) // times
        .u32(0)
        .u32(0)
        .u32(0) // nanoseconds
        .u32(0o100_644)
        .u32(0)
        .u32(77)
        .u32(88)
        .u32(0);
    assert_eq!(b.0.len(), size::SETATTR_IN);
    assert_eq!(
        op(&req(opcode::SETATTR, 2, 5, &b.0)),
        Operation::SetAttr(SetAttrIn {
            valid: abi::fattr::SIZE | abi::fattr::MODE,
            size: 12345,
            mode: 0o100_644,
            uid: 77,
            gid: 88,
        })
    );
    assert_eq!(
        body_err(&req(opcode::SETATTR, 2, 5, &b.0[..87])),
        Errno::INVAL
    );
}

#[test]
fn read_and_write() {
    let r = Body::default()
        .u64(4)
        .u64(1 << 40)
        .u32(131_072)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0);
    assert_eq!(
        op(&req(opcode::READ, 2, 5, &r.0)),
        Operation::Read {
            fh: 4,
            offset: 1 << 40,
            size: 131_072
        }
    );
    let w = Body::default()
        .u64(4)
        .u64(4096)
        .u32(5)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0)
        .bytes(b"hello");
    assert_eq!(
        op(&req(opcode::WRITE, 2, 5, &w.0)),
        Operation::Write {
            fh: 4,
            offset: 4096,
            data: b"hello"
        }
    );
    // A size larger than what follows.
    let cut = &w.0[..w.0.len() - 1];
    assert_eq!(body_err(&req(opcode::WRITE, 2, 5, cut)), Errno::INVAL);
    // Bytes beyond the size are not part of the data.
    let mut more = w.0.clone();
    more.extend_from_slice(b"!!");
    assert_eq!(
        op(&req(opcode::WRITE, 2, 5, &more)),
        Operation::Write {
            fh: 4,
            offset: 4096,
            data: b"hello"
        }
    );
}

#[test]
fn init_folds_flags2_only_with_init_ext() {
    let ext = Body::default()
        .u32(7)
        .u32(44)
        .u32(131_072)
        .u32(u32::try_from(init_flags::INIT_EXT | init_flags::ASYNC_DIO).unwrap())
        .u32(1 << 7)
        .bytes(&[0; 44]);
    assert_eq!(
        op(&req(opcode::INIT, 2, 0, &ext.0)),
        Operation::Init(InitIn {
            major: 7,
            minor: 44,
            max_readahead: 131_072,
            flags: init_flags::INIT_EXT | init_flags::ASYNC_DIO | init_flags::HAS_RESEND,
        })
    );
    let old = Body::default()
        .u32(7)
        .u32(31)
        .u32(65_536)
        .u32(1)
        .u32(1 << 7);
    assert_eq!(
        op(&req(opcode::INIT, 2, 0, &old.0)),
        Operation::Init(InitIn {
            major: 7,
            minor: 31,
            max_readahead: 65_536,
            flags: 1,
        })
    );
    let compat = Body::default().u32(7).u32(23).u32(0).u32(0);
    assert!(matches!(
        op(&req(opcode::INIT, 2, 0, &compat.0)),
        Operation::Init(_)
    ));
    assert_eq!(
        body_err(&req(opcode::INIT, 2, 0, &compat.0[..12])),
        Errno::INVAL
    );
}

#[test]
fn signed_fields_of_lseek_and_fallocate() {
    let l = Body::default().u64(3).u64(u64::MAX).u32(4).u32(0);
    assert_eq!(
        op(&req(opcode::LSEEK, 2, 5, &l.0)),
        Operation::Lseek {
            fh: 3,
            offset: -1,
            whence: 4
        }
    );
    let f = Body::default().u64(3).u64(10).u64(20).u32(u32::MAX).u32(0);
    assert_eq!(
        op(&req(opcode::FALLOCATE, 2, 5, &f.0)),
        Operation::Fallocate {
            fh: 3,
            offset: 10,
            length: 20,
            mode: -1
        }
    );
}

#[test]
fn simple_opcodes() {
    let release = Body::default().u64(11).u32(0).u32(0).u64(0);
    assert_eq!(
        op(&req(opcode::RELEASE, 2, 5, &release.0)),
        Operation::Release { fh: 11 }
    );
    let fsync = Body::default().u64(12).u32(1).u32(0);
    assert_eq!(
        op(&req(opcode::FSYNC, 2, 5, &fsync.0)),
        Operation::Fsync { fh: 12 }
    );
    let open = Body::default().u32(2).u32(0);
    assert_eq!(
        op(&req(opcode::OPEN, 2, 5, &open.0)),
        Operation::Open { flags: 2 }
    );
    let rd = Body::default()
        .u64(0)
        .u64(3)
        .u32(4096)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0);
    assert_eq!(
        op(&req(opcode::READDIR, 2, 1, &rd.0)),
        Operation::ReadDir {
            offset: 3,
            size: 4096
        }
    );
    assert_eq!(op(&req(opcode::DESTROY, 2, 0, &[])), Operation::Destroy);
    assert_eq!(op(&req(opcode::FORGET, 0, 5, &[1; 8])), Operation::Forget);
    assert_eq!(op(&req(opcode::BATCH_FORGET, 0, 0, &[])), Operation::Forget);
    assert_eq!(
        op(&req(opcode::RELEASEDIR, 2, 1, &[0; 24])),
        Operation::DirDone
    );
    assert_eq!(op(&req(opcode::OPENDIR, 2, 1, &[0; 8])), Operation::OpenDir);
    assert_eq!(
        op(&req(opcode::INTERRUPT, 3, 0, &[0; 8])),
        Operation::Interrupt
    );
    for refused in [
        opcode::CREATE,
        opcode::MKDIR,
        opcode::UNLINK,
        opcode::RENAME2,
    ] {
        assert_eq!(op(&req(refused, 2, 1, b"x\0")), Operation::NamespaceChange);
    }
    // Readlink, getxattr, listxattr, access, statx, ...: not implemented.
    for other in [5, 22, 23, 34, 52, 4096, u32::MAX] {
        assert_eq!(op(&req(other, 2, 1, &[])), Operation::Unsupported(other));
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Every opcode with every body length up to a little past the largest structure, filled
    // with a changing pattern: parsing returns, whatever it returns.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for opcode in 0..=60 {
        for len in 0..140 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed.to_le_bytes()[0]
                })
                .collect();
            let buf = req(opcode, 2, 1, &body);
            let _ = parse(&buf);
            for cut in [0, 1, 20, 39, 40, 41] {
                let _ = parse(&buf[..cut.min(buf.len())]);
            }
        }
    }
}
