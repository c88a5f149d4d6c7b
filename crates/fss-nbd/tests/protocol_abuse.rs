//! The protocol byte by byte from a raw unix-socket client: what the handshake and the
//! transmission phase answer to wrong, unsupported and hostile requests, and that only a broken
//! stream ends a connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::{self, greet, meta_data, option, send_option, Client};
use common::Harness;
use fss_nbd::protocol as p;
use fss_nbd::ServerOptions;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const EOVERFLOW: u32 = 75;
const ENOTSUP: u32 = 95;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

fn assert_read_works(c: &mut Client, off: u64, want: &[u8]) {
    let r = c.read(off, want.len() as u32);
    assert_eq!(r.error, 0, "read failed: {}", r.message);
    assert!(r.data == want, "read returned other bytes");
}

#[test]
fn unknown_options_are_unsupported_and_haggling_goes_on() {
    let h = Harness::new(MIB);
    let mut s = greet(&h.socket);
    for opt in [4u32, 11, 999, 0x7fff_ffff] {
        let r = option(&mut s, opt, b"some data the server must skip");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, p::REP_ERR_UNSUP, "option {opt}");
    }
    // Known options with bad data are invalid, and the session still goes on.
    assert_eq!(
        option(&mut s, p::OPT_LIST, b"x")[0].kind,
        p::REP_ERR_INVALID
    );
    assert_eq!(
        option(&mut s, p::OPT_GO, &[0, 0, 0, 9, b'a'])[0].kind,
        p::REP_ERR_INVALID
    );
    assert_eq!(
        option(&mut s, p::OPT_STRUCTURED_REPLY, b"x")[0].kind,
        p::REP_ERR_INVALID
    );
    // Metadata contexts need structured replies first.
    let r = option(
        &mut s,
        p::OPT_SET_META_CONTEXT,
        &meta_data("default", &["base:allocation"]),
    );
    assert_eq!(r[0].kind, p::REP_ERR_INVALID);
    // An option too large to read is skipped and refused.
    send_option(&mut s, p::OPT_INFO, &vec![0u8; 100_000]);
    let r = client::read_option_reply(&mut s);
    assert_eq!(r.kind, p::REP_ERR_TOO_BIG);
    let mut c = Client::go(s, "default", false, &[]);
    assert_eq!(c.size, MIB);
    assert_read_works(&mut c, 0, &[0; 512]);
    c.disconnect();
}

#[test]
fn starttls_is_refused_cleanly() {
    let h = Harness::new(MIB);
    let mut s = greet(&h.socket);
    let r = option(&mut s, p::OPT_STARTTLS, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].kind, p::REP_ERR_POLICY);
    assert!(String::from_utf8_lossy(&r[0].data).contains("TLS"));
    assert_eq!(
        option(&mut s, p::OPT_STARTTLS, b"junk")[0].kind,
        p::REP_ERR_INVALID
    );
    let r = option(&mut s, p::OPT_LIST, &[]);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, p::REP_SERVER);
    assert_eq!(&r[0].data[4..11], b"default");
    let c = Client::go(s, "", false, &[]);
    c.disconnect();
}

#[test]
fn unknown_exports_and_abort() {
    let h = Harness::new(MIB);
    let mut s = greet(&h.socket);
    let r = option(&mut s, p::OPT_GO, &client::go_data("nope", &[]));
    assert_eq!(r.len(), 1, "no info before an unknown-export error");
    assert_eq!(r[0].kind, p::REP_ERR_UNKNOWN);
    let r = option(&mut s, p::OPT_INFO, &client::go_data("", &[p::INFO_NAME]));
    assert_eq!(r.last().unwrap().kind, p::REP_ACK);
    let name = r
        .iter()
        .find(|x| x.kind == p::REP_INFO && x.data[..2] == p::INFO_NAME.to_be_bytes())
        .expect("NBD_INFO_NAME was asked for");
    assert_eq!(&name.data[2..], b"default");
    let r = option(&mut s, p::OPT_ABORT, &[]);
    assert_eq!(r[0].kind, p::REP_ACK);
    let mut b = [0u8; 1];
    assert_eq!(
        s.read(&mut b).unwrap(),
        0,
        "the server closes after an abort"
    );

    // NBD_OPT_EXPORT_NAME cannot be refused: the server closes the connection.
    let mut s = greet(&h.socket);
    send_option(&mut s, p::OPT_EXPORT_NAME, b"nope");
    assert_eq!(s.read(&mut b).unwrap(), 0);

    // Without a volume named `default`, the empty name is unknown too.
    h.catalog.remove("default");
    let mut s = greet(&h.socket);
    let r = option(&mut s, p::OPT_GO, &client::go_data("", &[]));
    assert_eq!(r[0].kind, p::REP_ERR_UNKNOWN);
}

#[test]
fn export_name_enters_transmission_with_simple_replies() {
    let h = Harness::new(MIB);
    h.volume.write(&[5; 4096], 0).unwrap();
    let mut s = greet(&h.socket);
    send_option(&mut s, p::OPT_EXPORT_NAME, b"default");
    // NO_ZEROES was negotiated: size and flags only.
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), MIB);
    let flags = u16::from_be_bytes([r[8], r[9]]);
    assert_eq!(flags & p::FLAG_READ_ONLY, 0);
    assert_ne!(flags & p::FLAG_CAN_MULTI_CONN, 0);
    let mut c = Client::go_raw(s);
    assert_read_works(&mut c, 0, &[5; 4096]);
    // Simple replies: errors carry no payload, and the stream stays in step.
    assert_eq!(c.read(MIB - 1, 2).error, EINVAL);
    assert_eq!(c.read(0, fss_nbd::MAX_PAYLOAD + 1).error, EINVAL);
    assert_eq!(c.call(0, CMD_BLOCK_STATUS, 0, 4096, &[]).error, EINVAL);
    assert_read_works(&mut c, 4095, &[5, 0]);
    c.disconnect();
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let h = Harness::new(64 * MIB);
    h.volume.write(&[0x42; 8192], 0).unwrap();
    let mut c = Client::open(&h.socket, "default", true, &[]);
    let size = c.size;

    // Out of range, and offset + length overflowing.
    assert_eq!(c.read(size - 4096, 8192).error, EINVAL);
    assert_eq!(c.read(u64::MAX - 10, 100).error, EINVAL);
    assert_read_works(&mut c, 0, &[0x42; 8192]);
    // Larger than the maximum payload (structured: EOVERFLOW, with a message).
    let r = c.read(0, fss_nbd::MAX_PAYLOAD + 1);
    assert_eq!(r.error, EOVERFLOW);
    assert!(r.message.contains("maximum"), "{}", r.message);
    // Exactly the maximum works.
    let r = c.read(0, fss_nbd::MAX_PAYLOAD);
    assert_eq!(r.error, 0);
    assert_eq!(r.data.len(), fss_nbd::MAX_PAYLOAD as usize);
    assert!(r.data[..8192].iter().all(|&b| b == 0x42));
    // Unknown command, unknown flag, a flag of another command.
    assert_eq!(c.call(0, 42, 0, 0, &[]).error, EINVAL);
    assert_eq!(c.call(1 << 9, CMD_READ, 0, 512, &[]).error, EINVAL);
    assert_eq!(
        c.call(p::CMD_FLAG_NO_HOLE, CMD_READ, 0, 512, &[]).error,
        EINVAL
    );
    // Block status without a selected context.
    assert_eq!(c.call(0, CMD_BLOCK_STATUS, 0, 4096, &[]).error, EINVAL);
    // Writes past the end: EINVAL (DESIGN; the NBD spec suggests ENOSPC), payload consumed.
    let r = c.write(size - 100, &[1; 200]);
    assert_eq!(r.error, EINVAL);
    assert_read_works(&mut c, 0, &[0x42; 8192]);
    // A write over the maximum: refused, payload skipped, stream in step.
    let big = vec![0x99u8; fss_nbd::MAX_PAYLOAD as usize + 4096];
    let r = c.write(0, &big);
    assert_eq!(r.error, EINVAL);
    assert_read_works(&mut c, 0, &[0x42; 8192]);
    // Trim past the end; write-zeroes past the end; fast zero is not promised.
    assert_eq!(c.call(0, CMD_TRIM, size, 1, &[]).error, EINVAL);
    assert_eq!(c.call(0, CMD_WRITE_ZEROES, size - 1, 2, &[]).error, EINVAL);
    assert_eq!(
        c.call(p::CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 0, 4096, &[])
            .error,
        ENOTSUP
    );
    assert_read_works(&mut c, 0, &[0x42; 8192]);
    // Zero-length requests are harmless.
    assert_eq!(c.read(0, 0).error, 0);
    assert_eq!(c.write(0, &[]).error, 0);
    assert_eq!(c.call(0, CMD_CACHE, 0, 4096, &[]).error, 0);
    // And real work still goes through: FUA write, zeroes (large, in pieces), flush.
    assert_eq!(
        c.call(p::CMD_FLAG_FUA, CMD_WRITE, 4096, 4, &[7; 4]).error,
        0
    );
    assert_read_works(&mut c, 4094, &[0x42, 0x42, 7, 7, 7, 7, 0x42]);
    assert_eq!(
        c.call(p::CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 40 << 20, &[])
            .error,
        0
    );
    assert_read_works(&mut c, 0, &[0; 8192]);
    assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]).error, 0);
    c.disconnect();
}

#[test]
fn snapshots_refuse_writes_with_eperm() {
    let h = Harness::new(MIB);
    h.volume.write(&[3; 4096], 0).unwrap();
    h.snapshot("snap");
    let mut c = Client::open(&h.socket, "snap", true, &[]);
    assert_ne!(c.flags & p::FLAG_READ_ONLY, 0);
    for (cmd, payload) in [
        (CMD_WRITE, vec![9u8; 4096]),
        (CMD_TRIM, vec![]),
        (CMD_WRITE_ZEROES, vec![]),
    ] {
        let r = c.call(0, cmd, 0, 4096, &payload);
        assert_eq!(r.error, EPERM, "command {cmd}");
        assert!(r.message.contains("read-only"), "{}", r.message);
    }
    assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]).error, 0);
    assert_read_works(&mut c, 0, &[3; 4096]);
    c.disconnect();
    let mut b = [0u8; 4096];
    h.volume.read(&mut b, 0).unwrap();
    assert_eq!(b, [3; 4096]);
}

#[test]
fn bad_magic_and_truncation_close_only_that_connection() {
    let h = Harness::new(MIB);
    h.volume.write(&[8; 4096], 0).unwrap();
    let mut good = Client::open(&h.socket, "default", true, &[]);

    let mut bad = Client::open(&h.socket, "default", true, &[]);
    let mut req = p::Request::encode(0, CMD_READ, 1, 0, 512);
    req[0] ^= 0xff;
    bad.s.write_all(&req).unwrap();
    assert!(bad.closed_within(Duration::from_secs(10)));

    let mut truncated = Client::open(&h.socket, "default", true, &[]);
    let req = p::Request::encode(0, CMD_WRITE, 1, 0, 4096);
    truncated.s.write_all(&req).unwrap();
    truncated.s.write_all(&[1; 100]).unwrap();
    truncated.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(truncated.closed_within(Duration::from_secs(10)));

    // A bad option magic during the handshake ends that one.
    let mut s = greet(&h.socket);
    s.write_all(&[0u8; 16]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);

    // Nothing of it reached the volume, and the others are fine.
    assert_read_works(&mut good, 0, &[8; 4096]);
    let mut late = Client::open(&h.socket, "default", false, &[]);
    assert_read_works(&mut late, 0, &[8; 4096]);
    late.disconnect();
    good.disconnect();
}

#[test]
fn block_status_on_both_contexts() {
    let h = Harness::new(4 * MIB);
    h.volume.write(&[1; 65536], 0).unwrap();
    h.snapshot("snap");
    h.volume.write(&[2; 4096], 8192).unwrap();

    // Listing: all contexts, or those matching a wildcard.
    let mut s = greet(&h.socket);
    option(&mut s, p::OPT_STRUCTURED_REPLY, &[]);
    let names = |r: &[client::OptReply]| -> Vec<String> {
        r.iter()
            .filter(|x| x.kind == p::REP_META_CONTEXT)
            .map(|x| String::from_utf8(x.data[4..].to_vec()).unwrap())
            .collect()
    };
    let r = option(&mut s, p::OPT_LIST_META_CONTEXT, &meta_data("snap", &[]));
    assert_eq!(names(&r), ["base:allocation", "fss:preserved"]);
    let r = option(
        &mut s,
        p::OPT_LIST_META_CONTEXT,
        &meta_data("snap", &["fss:"]),
    );
    assert_eq!(names(&r), ["fss:preserved"]);
    let r = option(
        &mut s,
        p::OPT_LIST_META_CONTEXT,
        &meta_data("default", &["fss:"]),
    );
    assert_eq!(names(&r), Vec::<String>::new());
    assert_eq!(r.last().unwrap().kind, p::REP_ACK);
    let r = option(
        &mut s,
        p::OPT_LIST_META_CONTEXT,
        &meta_data("snap", &["nocolon"]),
    );
    assert_eq!(r.last().unwrap().kind, p::REP_ERR_INVALID);
    let r = option(
        &mut s,
        p::OPT_SET_META_CONTEXT,
        &meta_data("snap", &["base:allocation", "fss:preserved", "x-y:z"]),
    );
    assert_eq!(names(&r), ["base:allocation", "fss:preserved"]);
    let mut c = Client::go(s, "snap", true, &["base:allocation", "fss:preserved"]);

    let r = c.call(0, CMD_BLOCK_STATUS, 0, 4 * MIB as u32, &[]);
    assert_eq!(r.error, 0, "{}", r.message);
    assert_eq!(r.extents.len(), 2);
    let alloc = r.extents.iter().find(|e| e.0 == 1).unwrap();
    assert_eq!(alloc.1, vec![(4 * MIB as u32, 0)], "a snapshot is all data");
    let pres = r.extents.iter().find(|e| e.0 == 2).unwrap();
    assert_eq!(
        pres.1,
        vec![
            (8192, 0),
            (4096, p::STATE_PRESERVED),
            (4 * MIB as u32 - 12288, 0)
        ]
    );
    // REQ_ONE: one extent per context, never longer than asked.
    let r = c.call(p::CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 4096, 100_000, &[]);
    for (_, d) in &r.extents {
        assert_eq!(d.len(), 1);
        assert!(d[0].0 <= 100_000);
    }
    assert_eq!(c.call(0, CMD_BLOCK_STATUS, 4 * MIB, 1, &[]).error, EINVAL);
    c.disconnect();

    // A selection made for another export does not carry over to the one chosen.
    let mut s = greet(&h.socket);
    option(&mut s, p::OPT_STRUCTURED_REPLY, &[]);
    option(
        &mut s,
        p::OPT_SET_META_CONTEXT,
        &meta_data("snap", &["base:allocation"]),
    );
    let mut c = Client::go(s, "default", true, &[]);
    assert_eq!(c.call(0, CMD_BLOCK_STATUS, 0, 4096, &[]).error, EINVAL);
    c.disconnect();
}

#[test]
fn structured_reads_send_holes_as_hole_chunks() {
    let h = Harness::new(8 * MIB);
    h.volume.write(&[6; 65536], MIB).unwrap();
    let mut c = Client::open(&h.socket, "default", true, &[]);
    let r = c.read(0, 4 * MIB as u32);
    assert_eq!(r.error, 0);
    assert!(
        r.chunk_types.contains(&p::REPLY_TYPE_OFFSET_HOLE),
        "{:?}",
        r.chunk_types
    );
    let mut want = vec![0u8; 4 * MIB as usize];
    want[MIB as usize..MIB as usize + 65536].fill(6);
    assert!(r.data == want);
    // Don't-fragment: one data chunk.
    let r = c.call(p::CMD_FLAG_DF, CMD_READ, 0, 2 * MIB as u32, &[]);
    assert_eq!(r.chunk_types, vec![p::REPLY_TYPE_OFFSET_DATA]);
    assert!(r.data == want[..2 * MIB as usize]);
    c.disconnect();
}

#[test]
fn pipelined_requests_are_all_answered() {
    let h = Harness::new(16 * MIB);
    let mut c = Client::open(&h.socket, "default", true, &[]);
    let mut cookies = Vec::new();
    for i in 0..200u64 {
        let data = vec![(i % 251) as u8; 4096];
        cookies.push(c.send(0, CMD_WRITE, i * 4096, 4096, &data));
    }
    for ck in cookies.drain(..) {
        assert_eq!(c.reply(ck).error, 0);
    }
    for i in 0..200u64 {
        cookies.push(c.send(0, CMD_READ, i * 4096, 4096, &[]));
    }
    cookies.push(c.send(0, CMD_READ, 16 * MIB, 1, &[]));
    for (i, ck) in cookies.iter().enumerate() {
        let r = c.reply(*ck);
        if i == 200 {
            assert_eq!(r.error, EINVAL);
        } else {
            assert_eq!(r.error, 0);
            assert!(r.data.iter().all(|&b| b == (i % 251) as u8));
        }
    }
    c.disconnect();
}

#[test]
fn a_client_that_does_not_read_stalls_nobody_else() {
    let h = Harness::with_options(
        64 * MIB,
        ServerOptions {
            max_requests_in_flight: 8,
            max_bytes_in_flight: 8 << 20,
            ..ServerOptions::default()
        },
    );
    // This client asks for 256 MiB of reads and never reads a reply.
    let mut hog = Client::open(&h.socket, "default", true, &[]);
    hog.s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0;
    for i in 0..64u64 {
        let req = p::Request::encode(0, CMD_READ, i, (i % 16) * 4 * MIB, (4 * MIB) as u32);
        if hog.s.write_all(&req).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 0);
    // Meanwhile another client works normally, and quickly.
    let start = Instant::now();
    let mut c = Client::open(&h.socket, "default", true, &[]);
    for i in 0..50u64 {
        assert_eq!(c.write(i * 4096, &[i as u8; 4096]).error, 0);
        assert_read_works(&mut c, i * 4096, &[i as u8; 4096]);
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(h.server.exports_in_use().get("default"), Some(&2));
    c.disconnect();
    drop(hog);
    assert!(h.server.wait_idle(Duration::from_secs(10)));
}

#[test]
fn shutdown_refuses_new_negotiations_and_can_force_clients_off() {
    let h = Harness::new(MIB);
    h.snapshot("snap");
    let mut a = Client::open(&h.socket, "default", true, &[]);
    let b = Client::open(&h.socket, "snap", false, &[]);
    let mut s = greet(&h.socket);
    let t0 = Instant::now();
    while h.server.connection_count() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let used = h.server.exports_in_use();
    assert_eq!(used.get("default"), Some(&1));
    assert_eq!(used.get("snap"), Some(&1));
    let conns = h.server.connections();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns.iter().filter(|c| c.export.is_none()).count(), 1);
    let me = format!("pid {}", std::process::id());
    assert!(conns.iter().all(|c| c.peer.contains(&me)), "{conns:?}");

    let stop = h.server.shutdown_handle();
    stop.shutdown();
    assert!(stop.is_shutdown());
    // A connection still haggling is told the server is going away.
    let r = option(&mut s, p::OPT_GO, &client::go_data("default", &[]));
    assert_eq!(r[0].kind, p::REP_ERR_SHUTDOWN);
    // Connections in transmission go on until their clients leave ...
    assert_read_works(&mut a, 0, &[0; 100]);
    assert!(!h.server.wait_idle(Duration::from_millis(200)));
    // ... or are forced off.
    assert_eq!(stop.disconnect_all(), 3);
    assert!(h.server.wait_idle(Duration::from_secs(10)));
    assert!(a.closed_within(Duration::from_secs(5)));
    drop(b);
}

#[test]
fn block_status_answers_a_huge_request_in_part() {
    // A sparse 4 GiB volume: nothing is allocated on disk.
    let h = Harness::new(4 << 30);
    h.volume.write(&[1; 4096], 3 << 30).unwrap();
    let mut c = Client::open(&h.socket, "default", true, &["base:allocation"]);
    let r = c.call(0, CMD_BLOCK_STATUS, 0, u32::MAX, &[]);
    assert_eq!(r.error, 0, "{}", r.message);
    let (id, d) = &r.extents[0];
    assert_eq!(*id, 1);
    let covered: u64 = d.iter().map(|e| u64::from(e.0)).sum();
    assert!(covered > 0 && covered <= 1 << 30, "{d:?}");
    assert_eq!(d[0].1, p::STATE_HOLE | p::STATE_ZERO);
    // Asking again from 3 GiB finds the data.
    let r = c.call(0, CMD_BLOCK_STATUS, 3 << 30, 1 << 20, &[]);
    assert_eq!(r.extents[0].1[0], (4096, 0));
    c.disconnect();
}

#[test]
fn random_garbage_never_panics_the_server() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current().name().unwrap_or("").to_string();
        if name.starts_with("nbd-") {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));

    let h = Harness::new(4 * MIB);
    h.snapshot("snap");
    let mut rng = common::Rng::new(7);
    for round in 0..60u64 {
        let export = if round % 2 == 0 { "default" } else { "snap" };
        if round % 3 == 0 {
            // Option haggling: valid magics, random options and data.
            let mut s = greet(&h.socket);
            for _ in 0..20 {
                let opt = match rng.below(4) {
                    0 => rng.below(16) as u32,
                    1 => rng.next() as u32,
                    _ => [
                        p::OPT_INFO,
                        p::OPT_LIST_META_CONTEXT,
                        p::OPT_SET_META_CONTEXT,
                    ][rng.below(3) as usize],
                };
                if opt == p::OPT_GO || opt == p::OPT_EXPORT_NAME || opt == p::OPT_ABORT {
                    continue;
                }
                let mut data = vec![0u8; rng.below(64) as usize];
                rng.fill(&mut data);
                if rng.below(2) == 0 && data.len() >= 4 {
                    // A plausible length prefix.
                    let n = rng.below(data.len() as u64) as u32;
                    data[..4].copy_from_slice(&n.to_be_bytes());
                }
                send_option(&mut s, opt, &data);
                loop {
                    let r = client::read_option_reply(&mut s);
                    if r.kind == p::REP_ACK || r.kind & p::REP_FLAG_ERROR != 0 {
                        break;
                    }
                }
            }
        } else {
            // Transmission: well-framed requests with random commands, flags, ranges.
            let mut c = Client::open(&h.socket, export, round % 4 != 1, &[]);
            let mut cookies = Vec::new();
            for _ in 0..30 {
                let cmd = [0u16, 1, 3, 4, 5, 6, 7, 8, 99][rng.below(9) as usize];
                let flags = rng.next() as u16 & 0x3f;
                let off = if rng.below(2) == 0 {
                    rng.below(8 * MIB)
                } else {
                    rng.next()
                };
                let len = if cmd == 1 {
                    rng.below(70_000) as u32
                } else {
                    rng.next() as u32
                };
                let payload = if cmd == 1 {
                    vec![0xee; len as usize]
                } else {
                    Vec::new()
                };
                cookies.push(c.send(flags, cmd, off, len, &payload));
            }
            for ck in cookies {
                let _ = c.reply(ck);
            }
            c.disconnect();
        }
        // Finally, raw bytes.
        let mut s = greet(&h.socket);
        let mut junk = vec![0u8; rng.below(200) as usize];
        rng.fill(&mut junk);
        let _ = s.write_all(&junk);
    }
    // The server still serves, and no server thread panicked.
    let mut c = Client::open(&h.socket, "default", true, &[]);
    assert_eq!(c.read(0, 4096).error, 0);
    c.disconnect();
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0);
}
