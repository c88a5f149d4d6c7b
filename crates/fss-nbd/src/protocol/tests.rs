//! Unit tests of the wire encoding.
use super::*;

#[test]
fn request_round_trip_and_bad_magic() {
    let b = Request::encode(CMD_FLAG_FUA, 1, 0xdead_beef, 4096, 512);
    let r = Request::decode(&b).unwrap();
    assert_eq!(
        r,
        Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0xdead_beef,
            offset: 4096,
            length: 512
        }
    );
    let mut bad = b;
    bad[0] = 0;
    assert_eq!(Request::decode(&bad), Err(0x0060_9513));
    assert_eq!(Command::from_wire(99), Command::Unknown(99));
}

#[test]
fn option_header_and_reply() {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    h[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
    h[12..16].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        OptionHeader::decode(&h),
        Ok(OptionHeader {
            option: OPT_GO,
            length: 7
        })
    );
    let r = option_reply(OPT_LIST, REP_ACK, b"");
    assert_eq!(r.len(), 20);
    assert_eq!(&r[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[12..16], &REP_ACK.to_be_bytes());
    assert_eq!(REP_ERR_UNSUP, 0x8000_0001);
}

#[test]
fn info_request_parsing() {
    let mut d = Vec::new();
    d.extend_from_slice(&3u32.to_be_bytes());
    d.extend_from_slice(b"vol");
    d.extend_from_slice(&2u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&INFO_NAME.to_be_bytes());
    let r = InfoRequest::decode(&d).unwrap();
    assert_eq!(r.name, "vol");
    assert_eq!(r.items, vec![INFO_BLOCK_SIZE, INFO_NAME]);
    // Name length past the data, and a trailing byte, are both malformed.
    let mut long = d.clone();
    long[3] = 200;
    assert!(InfoRequest::decode(&long).is_none());
    d.push(0);
    assert!(InfoRequest::decode(&d).is_none());
    assert!(InfoRequest::decode(&[0, 0]).is_none());
}

#[test]
fn meta_request_parsing_rejects_hostile_counts() {
    let mut d = Vec::new();
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&15u32.to_be_bytes());
    d.extend_from_slice(b"base:allocation");
    let r = MetaRequest::decode(&d).unwrap();
    assert_eq!(r.name, "");
    assert_eq!(r.queries, vec!["base:allocation".to_string()]);
    let mut hostile = Vec::new();
    hostile.extend_from_slice(&0u32.to_be_bytes());
    hostile.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(MetaRequest::decode(&hostile).is_none());
}

#[test]
fn chunks_encode_lengths() {
    let data = [7u8; 10];
    let c = Chunk::Data {
        offset: 512,
        data: &data,
    };
    let h = c.encode_head(REPLY_FLAG_DONE, 9);
    assert_eq!(h.len(), CHUNK_HEADER_LEN + 8);
    assert_eq!(be32(&h, 16), 18);
    assert_eq!(be16(&h, 6), REPLY_TYPE_OFFSET_DATA);
    assert_eq!(c.bulk(), &data);
    let e = Chunk::Error {
        errno: NbdErrno::Inval,
        message: "bad",
    };
    let h = e.encode_head(REPLY_FLAG_DONE, 1);
    assert_eq!(be32(&h, 16), 9);
    assert_eq!(be32(&h, 20), 22);
    let ext = [(4096, STATE_HOLE | STATE_ZERO), (512, 0)];
    let b = Chunk::BlockStatus {
        context: 3,
        extents: &ext,
    }
    .encode_head(REPLY_FLAG_DONE, 1);
    assert_eq!(be32(&b, 16), 4 + 16);
    let hole = Chunk::Hole {
        offset: 0,
        len: 4096,
    }
    .encode_head(0, 1);
    assert_eq!(be32(&hole, 16), 12);
}

#[test]
fn long_messages_are_cut_on_a_char_boundary() {
    let s = "é".repeat(3000);
    let t = truncate_str(&s, MAX_STRING);
    assert!(t.len() <= MAX_STRING);
    assert!(t.len() >= MAX_STRING - 1);
    let e = Chunk::Error {
        errno: NbdErrno::Io,
        message: &s,
    }
    .encode_head(0, 0);
    assert_eq!(be16(&e, 24) as usize, t.len());
}

#[test]
fn greeting_and_export_name_reply() {
    let g = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(export_name_reply(1, FLAG_HAS_FLAGS, false).len(), 134);
    assert_eq!(export_name_reply(1, FLAG_HAS_FLAGS, true).len(), 10);
}
