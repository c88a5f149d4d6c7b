//! The server's limits under clients that hold resources: pipelining clients that do not read
//! their replies (a budget shared by all connections, back-pressure, the reply timeout),
//! handshakes that never finish (the handshake deadline, the pool of half-open connections and
//! its limit per peer), and a write header claiming up to 4 GiB (refused, the connection goes
//! on).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::{greet, Client};
use common::{Harness, Rng};
use fss_nbd::protocol as p;
use fss_nbd::ServerOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;

/// A volume of `size` bytes of pseudo-random data, served with `options`; and its bytes.
fn filled(size: u64, options: ServerOptions) -> (Harness, Vec<u8>) {
    let h = Harness::with_options(size, options);
    let mut data = vec![0u8; size as usize];
    Rng::new(size).fill(&mut data);
    h.volume.write(&data, 0).unwrap();
    (h, data)
}

/// Server options with these budgets (per connection, shared) and reply timeout.
fn budgets(per_connection: usize, total: usize, reply_timeout: Option<Duration>) -> ServerOptions {
    ServerOptions {
        max_bytes_in_flight: per_connection,
        max_total_bytes_in_flight: total,
        reply_timeout,
        ..ServerOptions::default()
    }
}

/// Send as many read requests of `len` bytes as the socket takes within `limit` (the server
/// stops reading it when its budget is spent); returns their cookies and offsets.
fn pipeline_reads(s: &mut UnixStream, len: u32, size: u64, max: u64) -> Vec<(u64, u64)> {
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut sent = Vec::new();
    for k in 0..max {
        let off = (k * u64::from(len)) % (size - u64::from(len) + 1);
        let req = p::Request::encode(0, CMD_READ, k + 1, off, len);
        if s.write_all(&req).is_err() {
            break;
        }
        sent.push((k + 1, off));
    }
    s.set_write_timeout(None).unwrap();
    sent
}

/// The largest value `f` returns while polled for `d`.
fn peak_over(d: Duration, f: impl Fn() -> usize) -> usize {
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < d {
        peak = peak.max(f());
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}

/// Whether the server closed `s` within `limit` (data it sent before is read and dropped).
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = vec![0u8; 1 << 20];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn stalled_clients_stay_within_the_shared_budget_and_others_are_served() {
    let (h, data) = filled(64 * MIB, budgets(16 << 20, 48 << 20, None));
    // Eight clients pipeline 8 MiB reads and never read a reply: 128 MiB of per-connection
    // budgets against 48 MiB shared.
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let mut c = Client::open(&h.socket, "default", false, &[]);
        let sent = pipeline_reads(&mut c.s, (8 * MIB) as u32, 64 * MIB, 64);
        assert!(sent.len() > 2, "only {} reads went out", sent.len());
        hogs.push(c);
    }
    let peak = peak_over(Duration::from_secs(2), || h.server.bytes_in_flight());
    assert!(peak <= 48 << 20, "{} MiB in flight", peak >> 20);
    assert!(peak >= 40 << 20, "the hogs got only {} MiB", peak >> 20);
    // A client sending small requests one at a time, or a few at once, is served meanwhile,
    // at once (up to 256 KiB in flight per connection need no share of the shared budget).
    let t = Instant::now();
    let mut c = Client::open(&h.socket, "default", true, &[]);
    for i in 0..40u64 {
        let (off, len) = (
            i * 1536 * 1024 + 17,
            [4096, 65536, 256 << 10][i as usize % 3],
        );
        let r = c.read(off, len);
        assert_eq!(r.error, 0);
        assert!(r.data == data[off as usize..off as usize + len as usize]);
    }
    let cookies: Vec<u64> = (0..8u64)
        .map(|i| c.send(0, CMD_READ, i * 65536, 65536, &[]))
        .collect();
    for (i, cookie) in cookies.into_iter().enumerate() {
        let at = i * 65536;
        assert!(c.reply(cookie).data == data[at..at + 65536]);
    }
    assert_eq!(c.write(5 * MIB, &[7; 4096]).error, 0);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(h.server.bytes_in_flight() <= 48 << 20);
    c.disconnect();
    drop(hogs);
    let t = Instant::now();
    while h.server.bytes_in_flight() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the budget was not given back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn clients_that_stall_then_resume_get_every_reply() {
    let (h, data) = filled(
        64 * MIB,
        budgets(16 << 20, 24 << 20, Some(Duration::from_secs(20))),
    );
    // Two clients at once, one with simple and one with structured replies, compete for the
    // shared budget while neither reads.
    let mut clients: Vec<(Client, Vec<(u64, u64)>)> = [false, true]
        .into_iter()
        .map(|structured| {
            let mut c = Client::open(&h.socket, "default", structured, &[]);
            let sent = pipeline_reads(&mut c.s, (4 * MIB) as u32, 64 * MIB, 40);
            (c, sent)
        })
        .collect();
    let peak = peak_over(Duration::from_secs(1), || h.server.bytes_in_flight());
    assert!(peak <= 24 << 20, "{} MiB in flight", peak >> 20);
    for (c, sent) in &mut clients {
        assert!(sent.len() > 6, "only {} reads went out", sent.len());
        // The rest of the requests go out now that the client reads (a helper thread sends
        // them while this one reads the replies).
        let mut tx = c.s.try_clone().unwrap();
        let more: Vec<(u64, u64)> = (sent.len() as u64..40)
            .map(|k| (k + 1, (k * 4 * MIB) % (60 * MIB)))
            .collect();
        let reqs = more.clone();
        let sender = std::thread::spawn(move || {
            for (cookie, off) in reqs {
                let r = p::Request::encode(0, CMD_READ, cookie, off, (4 * MIB) as u32);
                tx.write_all(&r).unwrap();
            }
        });
        // The client's table of pending requests learns of them by cookie.
        for &(cookie, off) in sent.iter().chain(&more) {
            c.expect(cookie, CMD_READ, off, (4 * MIB) as u32);
        }
        for &(cookie, off) in sent.iter().chain(&more) {
            let r = c.reply(cookie);
            assert_eq!(r.error, 0, "{}", r.message);
            assert!(
                r.data == data[off as usize..(off + 4 * MIB) as usize],
                "cookie {cookie}: other bytes"
            );
        }
        sender.join().unwrap();
    }
    for (c, _) in clients {
        c.disconnect();
    }
    assert_eq!(h.server.bytes_in_flight(), 0);
}

#[test]
fn a_client_that_never_reads_is_closed_after_the_reply_timeout() {
    let (h, data) = filled(
        64 * MIB,
        budgets(32 << 20, 32 << 20, Some(Duration::from_millis(500))),
    );
    let mut hog = Client::open(&h.socket, "default", false, &[]);
    let sent = pipeline_reads(&mut hog.s, (8 * MIB) as u32, 64 * MIB, 32);
    assert!(sent.len() >= 4);
    let t = Instant::now();
    while h.server.bytes_in_flight() < 32 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the hog never filled the budget"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A 1 MiB read needs the shared budget: it waits for the hog to be closed, then runs.
    let mut c = Client::open(&h.socket, "default", true, &[]);
    let t = Instant::now();
    let r = c.read(MIB, MIB as u32);
    let waited = t.elapsed();
    assert_eq!(r.error, 0);
    assert!(r.data == data[MIB as usize..2 * MIB as usize]);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(closed_within(&mut hog.s, Duration::from_secs(10)));
    // The well-behaved client goes on, and the budget is free again.
    assert_eq!(c.write(0, &[1; 4096]).error, 0);
    c.disconnect();
    let t = Instant::now();
    while h.server.bytes_in_flight() != 0 || h.server.connection_count() != 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_handshake_has_a_deadline_not_only_a_read_timeout() {
    let h = Harness::with_options(
        MIB,
        ServerOptions {
            handshake_timeout: Some(Duration::from_millis(400)),
            ..ServerOptions::default()
        },
    );
    // Silent after the client flags.
    let t = Instant::now();
    let mut idle = greet(&h.socket);
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Silent before the client flags.
    let mut mute = UnixStream::connect(&h.socket).unwrap();
    assert!(closed_within(&mut mute, Duration::from_secs(5)));
    // One byte every 100 ms: every read finishes well within 400 ms, the handshake never.
    let mut slow = greet(&h.socket);
    let t = Instant::now();
    let mut closed = false;
    let mut option = p::IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&999u32.to_be_bytes());
    option.extend_from_slice(&60_000u32.to_be_bytes());
    option.resize(option.len() + 60, 0);
    for b in option {
        if slow.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed || closed_within(&mut slow, Duration::from_millis(10)),
        "a trickling handshake lasted {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A connection in transmission may idle longer than that.
    let mut c = Client::open(&h.socket, "default", true, &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.write(0, &[5; 512]).error, 0);
    assert_eq!(c.read(0, 512).data, vec![5; 512]);
    c.disconnect();
}

/// Open `n` sockets that never say anything.
fn idle_sockets(path: &Path, n: usize) -> Vec<UnixStream> {
    (0..n).map(|_| UnixStream::connect(path).unwrap()).collect()
}

#[test]
fn idle_half_open_sockets_do_not_lock_out_a_client() {
    let h = Harness::with_options(
        MIB,
        ServerOptions {
            max_connections: 32,
            max_handshakes: 8,
            max_handshakes_per_peer: 4,
            handshake_timeout: Some(Duration::from_secs(60)),
            ..ServerOptions::default()
        },
    );
    let mut idle = idle_sockets(&h.socket, 100);
    let t = Instant::now();
    let mut c = Client::open(&h.socket, "default", true, &[]);
    assert_eq!(c.write(0, &[9; 4096]).error, 0);
    assert_eq!(c.read(0, 4096).data, vec![9; 4096]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // This process is one peer: at most 4 of its handshakes stay open, the newest ones.
    let t = Instant::now();
    while h
        .server
        .connections()
        .iter()
        .filter(|c| c.export.is_none())
        .count()
        > 4
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            h.server.connections()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(closed_within(&mut idle[0], Duration::from_secs(5)));
    assert!(closed_within(&mut idle[95], Duration::from_secs(5)));
    assert!(!closed_within(&mut idle[99], Duration::from_millis(100)));
    // Connections in transmission are never closed for room: another flood, and more clients
    // up to the connection limit, leave the first client working.
    let more: Vec<Client> = (0..20)
        .map(|_| {
            let _flood = idle_sockets(&h.socket, 10);
            Client::open(&h.socket, "default", false, &[])
        })
        .collect();
    assert_eq!(c.read(0, 4096).data, vec![9; 4096]);
    assert_eq!(h.server.exports_in_use().get("default"), Some(&21));
    c.disconnect();
    for m in more {
        m.disconnect();
    }
}

#[test]
fn oversized_write_headers_get_einval_and_the_connection_goes_on() {
    let h = Harness::new(64 * MIB);
    h.snapshot("snap");
    let chunk = vec![0xa5u8; MIB as usize];
    let cases: [(&str, bool, u32, u32); 4] = [
        ("default", true, 32 << 20 | 1, EINVAL),
        ("default", false, 200 << 20, EINVAL),
        ("default", true, u32::MAX, EINVAL),
        ("snap", true, 64 << 20, EPERM),
    ];
    for (export, structured, len, errno) in cases {
        let mut c = Client::open(&h.socket, export, structured, &[]);
        let cookie = c.send(0, CMD_WRITE, 0, len, &[]);
        // The payload the header announced follows, as a client that believed it acceptable
        // would send it.
        let mut left = u64::from(len);
        while left > 0 {
            let n = left.min(MIB) as usize;
            c.s.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        let r = c.reply(cookie);
        assert_eq!(
            r.error, errno,
            "{export}: write of {len} bytes: {}",
            r.message
        );
        if structured {
            assert!(!r.message.is_empty());
        }
        // The next request works: nothing of the payload was taken for a request.
        let r = c.read(0, 4096);
        assert_eq!(r.error, 0);
        assert_eq!(
            r.data,
            vec![0; 4096],
            "{export}: the refused payload was written"
        );
        c.disconnect();
    }
    assert_eq!(h.server.bytes_in_flight(), 0);
}

#[test]
fn over_tcp_a_peer_is_its_address_and_its_idle_sockets_are_closed_first() {
    use fss_core::device::MemDevice;
    use fss_core::export::Export;
    use fss_core::Volume;
    use fss_nbd::{Server, StaticCatalog};
    use std::net::TcpStream;
    use std::sync::Arc;

    let catalog = Arc::new(StaticCatalog::new());
    catalog.insert(Export::Volume(Volume::new(
        "default",
        Arc::new(MemDevice::new(MIB)),
    )));
    let server = Server::new(
        catalog,
        ServerOptions {
            max_handshakes_per_peer: 3,
            handshake_timeout: Some(Duration::from_secs(60)),
            ..ServerOptions::default()
        },
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    let t = std::thread::spawn(move || s.serve_tcp(listener));
    // Twenty idle sockets from 127.0.0.1, each from its own port.
    let mut idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A client from the same address still gets through the handshake.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    c.write_all(&p::FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    let mut abort = p::IHAVEOPT.to_be_bytes().to_vec();
    abort.extend_from_slice(&p::OPT_ABORT.to_be_bytes());
    abort.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&abort).unwrap();
    let mut reply = [0u8; 20];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(
        u32::from_be_bytes(reply[12..16].try_into().unwrap()),
        p::REP_ACK
    );
    // The oldest idle ones were closed, the newest kept (the client itself has gone).
    let closed = common::tcp_closed_within;
    assert!(closed(&mut idle[0], Duration::from_secs(5)));
    assert!(closed(&mut idle[16], Duration::from_secs(5)));
    assert!(!closed(&mut idle[19], Duration::from_millis(100)));
    let half_open = server
        .connections()
        .iter()
        .filter(|c| c.export.is_none())
        .count();
    assert!(half_open <= 3, "{:?}", server.connections());
    server.shutdown_handle().shutdown();
    t.join().unwrap().unwrap();
    drop(idle);
    assert!(server.wait_idle(Duration::from_secs(10)));
}
