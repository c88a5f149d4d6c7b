use super::*;

fn full() -> BackupHeader {
    BackupHeader {
        backup_id: [9; 16],
        volume_id: [1; 16],
        volume_name: "vol0".into(),
        volume_len: 3 * BLOCK + 100,
        snapshot: SnapshotRef {
            name: "a".into(),
            id: 1,
            created_ns: 1_700_000_000_000_000_000,
        },
        base: None,
        covered: 3 * BLOCK + 100,
        written_ns: 1_700_000_000_500_000_000,
    }
}

fn incr(base: &BackupHeader, name: &str, id: u64) -> BackupHeader {
    BackupHeader {
        backup_id: [id as u8; 16],
        snapshot: SnapshotRef {
            name: name.into(),
            id,
            created_ns: base.snapshot.created_ns + id,
        },
        base: Some(base.snapshot.clone()),
        covered: BLOCK,
        ..base.clone()
    }
}

/// CRC-32C of the whole encoded [`full`] header, fixed when format v1 was written.
const GOLDEN_HEADER_CRC: u32 = 0x4867_4bc7;

#[test]
fn header_round_trips_and_is_stable() {
    let h = full();
    let b = h.encode().unwrap();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(&b[0..8], b"FSSBACK\0");
    assert_eq!(BackupHeader::decode(&b).unwrap(), h);
    // The layout is fixed by docs/BACKUP.md: a change here breaks every backup written.
    assert_eq!(
        crc32c::crc32c(&b),
        GOLDEN_HEADER_CRC,
        "the v1 header layout changed"
    );
    assert_eq!(u64_at(&b, 56), 3 * BLOCK + 100);
    assert_eq!(&b[128..132], b"vol0");
    let i = incr(&h, "b", 2);
    let bi = i.encode().unwrap();
    assert_eq!(BackupHeader::decode(&bi).unwrap(), i);
    assert_eq!(u32_at(&bi, 16), 2);
    assert_eq!(u64_at(&bi, 80), 1);
    assert_eq!(&bi[256..257], b"a");
}

#[test]
fn every_flipped_header_bit_is_refused() {
    let b = full().encode().unwrap();
    for i in 0..HEADER_LEN * 8 {
        let mut d = b.clone();
        d[i / 8] ^= 1 << (i % 8);
        let p = BackupHeader::decode(&d).unwrap_err();
        assert!(!p.detail.is_empty());
    }
}

#[test]
fn bad_magic_version_and_truncation() {
    let b = full().encode().unwrap();
    assert_eq!(
        BackupHeader::decode(b"hello world").unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    let mut v = b.clone();
    v[8] = 2;
    assert_eq!(
        BackupHeader::decode(&v).unwrap_err().kind,
        ErrorKind::UnsupportedFormat
    );
    assert_eq!(
        BackupHeader::decode(&b[..100]).unwrap_err().kind,
        ErrorKind::CorruptStore
    );
}

#[test]
fn long_names_are_refused_when_encoding() {
    let mut h = full();
    h.volume_name = "v".repeat(65);
    assert_eq!(h.encode().unwrap_err().kind, ErrorKind::InvalidArgument);
}

#[test]
fn records_round_trip_and_are_tied_to_their_backup() {
    let id = [5; 16];
    for r in [
        Record::Data {
            seq: 3,
            offset: 8192,
            len: 4096,
            crc: 77,
        },
        Record::Zero {
            seq: 4,
            offset: 1 << 40,
            len: 1 << 30,
        },
        Record::End(Trailer {
            records: 5,
            data_bytes: 1,
            zero_bytes: 2,
            stream_crc: 3,
        }),
    ] {
        let b = r.encode(&id);
        assert_eq!(Record::decode(&id, &b).unwrap(), r);
        assert!(Record::decode(&[6; 16], &b).is_err());
        for i in 0..RECORD_LEN * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert!(Record::decode(&id, &d).is_err());
        }
    }
}

#[test]
fn stream_rules() {
    let h = full();
    let data = |seq, offset, len| Record::Data {
        seq,
        offset,
        len,
        crc: 0,
    };
    let zero = |seq, offset, len| Record::Zero { seq, offset, len };
    let mut c = StreamCheck::new(&h);
    c.extent(&data(0, 0, BLOCK)).unwrap();
    c.extent(&zero(1, BLOCK, BLOCK)).unwrap();
    // The last extent may end at the volume's unaligned end.
    c.extent(&data(2, 2 * BLOCK, BLOCK + 100)).unwrap();
    let t = Trailer {
        records: 3,
        data_bytes: 2 * BLOCK + 100,
        zero_bytes: BLOCK,
        stream_crc: 42,
    };
    c.end(&t, 42).unwrap();
    assert!(c.end(&t, 43).is_err());
    assert!(c.end(&Trailer { records: 2, ..t }, 42).is_err());

    let bad = |r: Record| {
        let mut c = StreamCheck::new(&h);
        c.extent(&data(0, 0, BLOCK)).unwrap();
        c.extent(&r).unwrap_err().detail
    };
    assert!(bad(data(2, BLOCK, BLOCK)).contains("sequence"));
    assert!(bad(data(1, 2 * BLOCK, BLOCK)).contains("missing"));
    assert!(bad(data(1, 0, BLOCK)).contains("overlaps"));
    assert!(bad(data(1, BLOCK + 1, BLOCK)).contains("aligned"));
    assert!(bad(data(1, BLOCK, 100)).contains("aligned"));
    assert!(bad(data(1, BLOCK, 0)).contains("empty"));
    assert!(bad(zero(1, BLOCK, u64::MAX)).contains("past"));
    assert!(bad(data(1, BLOCK, 4 * BLOCK)).contains("past"));

    // Incomplete full backup: the trailer does not add up.
    let mut c = StreamCheck::new(&h);
    c.extent(&data(0, 0, BLOCK)).unwrap();
    assert!(c
        .end(
            &Trailer {
                records: 1,
                data_bytes: BLOCK,
                zero_bytes: 0,
                stream_crc: 0
            },
            0
        )
        .unwrap_err()
        .detail
        .contains("promised"));

    // Incrementals may skip, not overlap; data records are bounded.
    let big = BackupHeader {
        volume_len: 1 << 30,
        ..incr(&h, "b", 2)
    };
    let big = BackupHeader {
        covered: 1 << 30,
        ..big
    };
    let mut c = StreamCheck::new(&big);
    c.extent(&zero(0, 8 * BLOCK, BLOCK)).unwrap();
    assert!(c
        .extent(&data(1, 16 * BLOCK, MAX_DATA + BLOCK))
        .unwrap_err()
        .detail
        .contains("longer"));
}

#[test]
fn chains() {
    let a = full();
    let b = incr(&a, "b", 2);
    let c = incr(&b, "c", 3);
    let ok = |v: &[(&str, &BackupHeader)]| check_chain(v);
    ok(&[("a", &a)]).unwrap();
    ok(&[("a", &a), ("b", &b), ("c", &c)]).unwrap();
    let err = |v: &[(&str, &BackupHeader)]| {
        let p = check_chain(v).unwrap_err();
        assert_eq!(p.kind, ErrorKind::InvalidArgument);
        p.detail
    };
    assert!(err(&[]).contains("no backup"));
    assert!(err(&[("b", &b), ("a", &a)]).contains("put the full backup 'a' first"));
    assert!(err(&[("a", &a), ("c", &c), ("b", &b)]).contains("wrong order"));
    assert!(err(&[("a", &a), ("c", &c)]).contains("gap"));
    assert!(err(&[("a", &a), ("b", &b), ("b2", &b)]).contains("repeated"));
    assert!(err(&[("a", &a), ("a2", &a)]).contains("only the first"));
    let other = BackupHeader {
        volume_id: [2; 16],
        ..b.clone()
    };
    assert!(err(&[("a", &a), ("x", &other)]).contains("not of volume"));
    let reborn = BackupHeader {
        base: Some(SnapshotRef {
            created_ns: 5,
            ..a.snapshot.clone()
        }),
        ..b.clone()
    };
    assert!(err(&[("a", &a), ("x", &reborn)]).contains("reused the id"));
}
