//! The `nbd_request` target: bytes from an NBD client, as the server's handshake (option
//! haggling) and its request checks see them.
//!
//! Input: one mode byte (bit 0: the server is shutting down; the rest: how many bytes each
//! read returns, so messages split across reads are exercised), then the client's bytes. The
//! handshake runs on them; every 28-byte piece is also checked as a transmission request
//! against a volume and a snapshot, with and without structured replies and a metadata
//! context. Beyond "never panic": the server's bytes are a greeting then well-formed option
//! replies, and an accepted request is within the export and the maximum payload, and never a
//! write to a snapshot.

use fss_core::device::MemDevice;
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{SnapshotOptions, Volume};
use fss_nbd::fuzzing::{self, Checked, HandshakeEnd};
use fss_nbd::protocol::{self as p, Command, Request, REQUEST_LEN};
use fss_nbd::{StaticCatalog, MAX_PAYLOAD};
use std::sync::{Arc, OnceLock};

/// The exports every run uses: the volume `default` (1 MiB) and its snapshot `snap`.
struct Exports {
    catalog: StaticCatalog,
    volume: Export,
    snapshot: Export,
}

fn exports() -> &'static Exports {
    static EXPORTS: OnceLock<Exports> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let volume = Volume::new("default", Arc::new(MemDevice::new(1 << 20)));
        let snap = volume
            .create_snapshot("snap", &SnapshotOptions::default(), DeviceStore::in_memory)
            .expect("an in-memory snapshot");
        let catalog = StaticCatalog::new();
        let (volume, snapshot) = (Export::Volume(volume), Export::Snapshot(snap));
        catalog.insert(volume.clone());
        catalog.insert(snapshot.clone());
        Exports {
            catalog,
            volume,
            snapshot,
        }
    })
}

/// The fuzz target's body.
pub fn nbd_request(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let e = exports();
    for piece in input.chunks_exact(REQUEST_LEN) {
        let header: &[u8; REQUEST_LEN] = piece.try_into().expect("28 bytes");
        for export in [&e.volume, &e.snapshot] {
            for (structured, contexts) in [(false, false), (true, false), (true, true)] {
                let c = fuzzing::request(header, export, structured, contexts);
                check_request(header, export, &c);
            }
        }
    }
    let step = usize::from(mode >> 1) + 1;
    let (out, end) = fuzzing::handshake(&e.catalog, input, step, mode & 1 == 1);
    check_server_bytes(&out, &end);
}

fn check_request(header: &[u8; REQUEST_LEN], export: &Export, c: &Checked) {
    let Ok(req) = Request::decode(header) else {
        assert!(matches!(c, Checked::BadMagic(_)), "{c:?}");
        return;
    };
    match c {
        Checked::Run { command, budget } => {
            assert_eq!(*command, req.command);
            assert!(*budget <= MAX_PAYLOAD as usize, "{c:?}");
            let end = req.offset.checked_add(u64::from(req.length));
            let in_range = end.is_some_and(|end| end <= export.len());
            let writes = matches!(
                command,
                Command::Write | Command::Trim | Command::WriteZeroes
            );
            assert!(!(writes && export.is_read_only()), "{c:?} on a snapshot");
            if matches!(command, Command::Read | Command::Write) {
                assert!(in_range && req.length <= MAX_PAYLOAD, "{req:?} accepted");
                assert_eq!(*budget, req.length as usize);
            }
            assert!(!matches!(command, Command::Unknown(_)), "{c:?}");
        }
        Checked::Refused { message, .. } => assert!(!message.is_empty(), "{c:?}"),
        Checked::Disconnect => assert_eq!(req.command, Command::Disc),
        Checked::BadMagic(_) => panic!("a request with the right magic refused as bad magic"),
    }
}

/// The server's bytes: the greeting, then option replies (each with its magic and a length
/// that matches), and after `NBD_OPT_EXPORT_NAME` its short reply.
fn check_server_bytes(out: &[u8], end: &HandshakeEnd) {
    assert!(out.len() >= 18, "no greeting");
    assert_eq!(
        u64::from_be_bytes(out[..8].try_into().expect("8")),
        p::NBDMAGIC
    );
    assert_eq!(
        u64::from_be_bytes(out[8..16].try_into().expect("8")),
        p::IHAVEOPT
    );
    let mut rest = &out[18..];
    let mut last_kind = None;
    while rest.len() >= 20
        && u64::from_be_bytes(rest[..8].try_into().expect("8")) == p::OPTION_REPLY_MAGIC
    {
        let kind = u32::from_be_bytes(rest[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(rest[16..20].try_into().expect("4")) as usize;
        assert!(rest.len() >= 20 + len, "an option reply is cut short");
        rest = &rest[20 + len..];
        last_kind = Some(kind);
    }
    match end {
        // NBD_OPT_EXPORT_NAME: export size and flags, and 124 zeroes unless NO_ZEROES.
        HandshakeEnd::Transmission { .. } if !rest.is_empty() => {
            assert!(
                rest.len() == 10 || rest.len() == 134,
                "{} stray bytes",
                rest.len()
            );
        }
        HandshakeEnd::Transmission { .. } => assert_eq!(last_kind, Some(p::REP_ACK)),
        _ => assert!(
            rest.is_empty(),
            "{} stray bytes after the replies",
            rest.len()
        ),
    }
}

/// The client's option: `IHAVEOPT`, its number, its length, its data.
fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut b = p::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// A GO / INFO body: the name and the information requested.
fn go(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = u32::try_from(name.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&u16::try_from(infos.len()).unwrap_or(0).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// A LIST_META_CONTEXT / SET_META_CONTEXT body.
fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = u32::try_from(name.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&u32::try_from(queries.len()).unwrap_or(0).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&u32::try_from(q.len()).unwrap_or(0).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Seeds: handshakes real clients make (each followed by a few requests), and wrong ones.
#[must_use]
pub fn nbd_seeds() -> Vec<(String, Vec<u8>)> {
    let flags = (p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES).to_be_bytes();
    let requests = [
        Request::encode(0, 0, 1, 0, 4096),
        Request::encode(p::CMD_FLAG_FUA, 1, 2, 4096, 512),
        Request::encode(0, 3, 3, 0, 0),
        Request::encode(p::CMD_FLAG_NO_HOLE, 6, 4, 0, 1 << 20),
        Request::encode(p::CMD_FLAG_REQ_ONE, 7, 5, 0, 1 << 20),
        Request::encode(0, 1, 6, 0, u32::MAX),
        Request::encode(0, 2, 7, 0, 0),
    ]
    .concat();
    let sessions: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "go-default",
            vec![option(p::OPT_GO, &go("", &[p::INFO_BLOCK_SIZE]))],
        ),
        (
            "structured-meta-go",
            vec![
                option(p::OPT_STRUCTURED_REPLY, &[]),
                option(
                    p::OPT_LIST_META_CONTEXT,
                    &meta("snap", &["base:", "fss:preserved"]),
                ),
                option(
                    p::OPT_SET_META_CONTEXT,
                    &meta("snap", &["base:allocation", "fss:preserved"]),
                ),
                option(p::OPT_GO, &go("snap", &[0, 1, 2, 3])),
            ],
        ),
        (
            "list-info-abort",
            vec![
                option(p::OPT_LIST, &[]),
                option(p::OPT_INFO, &go("default", &[p::INFO_NAME])),
                option(p::OPT_STARTTLS, &[]),
                option(99, b"x"),
                option(p::OPT_ABORT, &[]),
            ],
        ),
        ("export-name", vec![option(p::OPT_EXPORT_NAME, b"default")]),
        (
            "wrong",
            vec![
                option(p::OPT_GO, &go("nosuch", &[])),
                option(p::OPT_SET_META_CONTEXT, &meta("default", &["x"; 3])),
                option(p::OPT_INFO, &[0, 0, 0, 9, 1]),
                option(p::OPT_STRUCTURED_REPLY, b"junk"),
            ],
        ),
    ];
    sessions
        .into_iter()
        .map(|(name, options)| {
            let mut b = vec![0x0e]; // reads of 8 bytes, not shutting down
            b.extend_from_slice(&flags);
            b.extend(options.concat());
            b.extend_from_slice(&requests);
            (format!("seed-{name}"), b)
        })
        .collect()
}
