//! The TLS path under a raw client: FORCEDTLS leaks nothing before the upgrade, STARTTLS twice,
//! bytes smuggled after STARTTLS, garbage instead of a ClientHello, handshakes dropped or
//! trickled halfway, and many of them at once: each client fails alone, the server keeps
//! serving, within the handshake deadline and bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::{self, greet_on, option, read_option_reply, send_option};
use common::tls::{rss_kib, tls_client, TlsHarness};
use fss_nbd::protocol as p;
use fss_nbd::{ServerOptions, TlsMode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A plaintext connection after the greeting.
fn plain(t: &TlsHarness) -> TcpStream {
    let mut s = t.tcp();
    greet_on(&mut s);
    s
}

/// A connection that sent STARTTLS and got its acknowledgement.
fn started(t: &TlsHarness) -> TcpStream {
    let mut s = plain(t);
    let r = option(&mut s, p::OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, p::REP_ACK, "STARTTLS refused");
    s
}

use common::tcp_closed_within as closed_within;

/// A TLS client works: GO on `default`, then a simple read of 4 KiB.
fn served(t: &TlsHarness) {
    let mut s = tls_client(&t.certs, "alice", started(t));
    go_and_read(&mut s);
}

fn go_and_read<S: Read + Write>(s: &mut S) {
    let r = option(s, p::OPT_GO, &client::go_data("default", &[]));
    assert_eq!(r.last().unwrap().kind, p::REP_ACK);
    let mut req = Vec::new();
    req.extend_from_slice(&p::REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
    req.extend_from_slice(&7u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&4096u32.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = vec![0u8; 16 + 4096];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0; 4], "read failed");
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 7);
}

fn harness() -> TlsHarness {
    harness_of(MIB)
}

fn harness_of(size: u64) -> TlsHarness {
    TlsHarness::with_options(
        size,
        TlsMode::Require,
        true,
        &[],
        ServerOptions {
            handshake_timeout: Some(Duration::from_secs(1)),
            // Every test client is one peer; the per-peer limit is tested in limits.rs.
            max_handshakes_per_peer: 64,
            ..Default::default()
        },
    )
}

#[test]
fn forced_tls_refuses_every_option_and_leaks_no_export() {
    let t = harness();
    let mut s = plain(&t);
    for (opt, data) in [
        (p::OPT_LIST, Vec::new()),
        (p::OPT_INFO, client::go_data("default", &[p::INFO_NAME])),
        (p::OPT_GO, client::go_data("", &[])),
        (p::OPT_STRUCTURED_REPLY, Vec::new()),
        (
            p::OPT_LIST_META_CONTEXT,
            client::meta_data("default", &["base:"]),
        ),
        (99, Vec::new()),
    ] {
        let r = option(&mut s, opt, &data);
        assert_eq!(r.len(), 1, "option {opt}: only the refusal");
        assert_eq!(r[0].kind, p::REP_ERR_TLS_REQD, "option {opt}");
        let text = String::from_utf8_lossy(&r[0].data);
        assert!(
            text.contains("STARTTLS") && !text.contains("default"),
            "{text}"
        );
    }
    // Too large to read: refused the same way.
    send_option(&mut s, p::OPT_INFO, &vec![0u8; 100_000]);
    assert_eq!(read_option_reply(&mut s).kind, p::REP_ERR_TLS_REQD);
    assert_eq!(option(&mut s, p::OPT_ABORT, &[])[0].kind, p::REP_ACK);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // EXPORT_NAME has no error reply: the session ends.
    let mut s = plain(&t);
    send_option(&mut s, p::OPT_EXPORT_NAME, b"default");
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    served(&t);
}

#[test]
fn starttls_twice_and_with_data_is_invalid_and_the_session_goes_on() {
    let t = harness();
    let mut s = plain(&t);
    let r = option(&mut s, p::OPT_STARTTLS, b"x");
    assert_eq!(r[0].kind, p::REP_ERR_INVALID);
    let r = option(&mut s, p::OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, p::REP_ACK);
    let mut tls = tls_client(&t.certs, "alice", s);
    let r = option(&mut tls, p::OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, p::REP_ERR_INVALID, "a second STARTTLS");
    assert!(String::from_utf8_lossy(&r[0].data).contains("already"));
    // Options negotiated before the upgrade are forgotten; after it nothing is TLS_REQD.
    let r = option(&mut tls, p::OPT_LIST, &[]);
    assert_eq!(r.last().unwrap().kind, p::REP_ACK);
    go_and_read(&mut tls);
}

#[test]
fn bytes_sent_after_starttls_before_its_reply_end_the_session() {
    let t = harness();
    let mut s = plain(&t);
    let mut b = Vec::new();
    for _ in 0..2 {
        b.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&p::OPT_STARTTLS.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
    }
    // The second option would be read from the plaintext buffer as if sent over TLS.
    s.write_all(&b).unwrap();
    assert_eq!(read_option_reply(&mut s).kind, p::REP_ACK);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    served(&t);
}

/// The first bytes a real client sends: its ClientHello.
fn client_hello(t: &TlsHarness) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let config = common::tls::client_config(&t.certs, "alice");
    let mut c = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn garbage_and_broken_handshakes_fail_alone() {
    let t = harness();
    let mut rng = common::Rng::new(5);
    // Garbage instead of a ClientHello: an alert, then the end.
    let mut s = started(&t);
    let mut junk = vec![0u8; 64 * 1024];
    rng.fill(&mut junk);
    let _ = s.write_all(&junk);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A plausible record header claiming a huge handshake message.
    let mut s = started(&t);
    let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff]);
    let _ = s.write_all(&vec![0x41; 70_000]);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Half a ClientHello, then the client goes away.
    let hello = client_hello(&t);
    let mut s = started(&t);
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    drop(s);
    // Half a ClientHello, then silence: closed at the handshake deadline (1 s here).
    let mut s = started(&t);
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // The ClientHello a byte at a time: the deadline is for the whole handshake.
    let mut s = started(&t);
    let start = Instant::now();
    for b in hello.iter().take(40) {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    served(&t);
    assert!(t.h.server.wait_idle(Duration::from_secs(5)));
}

#[test]
fn many_abusive_clients_leave_memory_bounded_and_others_served() {
    let t = harness();
    let hello = client_hello(&t);
    // Warm up: threads, buffers and the allocator's arenas of a few real sessions.
    for _ in 0..4 {
        served(&t);
    }
    let before = rss_kib();
    std::thread::scope(|scope| {
        for worker in 0..8u64 {
            let (t, hello) = (&t, &hello);
            scope.spawn(move || {
                let mut rng = common::Rng::new(worker);
                for i in 0..40 {
                    let mut s = started(t);
                    match i % 4 {
                        0 => {
                            let mut junk = vec![0u8; 256 * 1024];
                            rng.fill(&mut junk);
                            let _ = s.write_all(&junk);
                        }
                        1 => {
                            let _ = s.write_all(&hello[..hello.len() / 2]);
                        }
                        2 => {
                            let _ = s.write_all(hello);
                            let _ = s.write_all(&[0x17, 0x03, 0x03, 0x40, 0x00]);
                        }
                        _ => {
                            let _ = s.write_all(hello);
                        }
                    }
                    drop(s);
                }
            });
        }
    });
    served(&t);
    assert!(
        t.h.server.wait_idle(Duration::from_secs(10)),
        "{:?}",
        t.h.server.connections()
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB over 320 abusive clients"
    );
}

/// A request header (simple replies).
fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&p::REQUEST_MAGIC.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&cmd.to_be_bytes());
    req.extend_from_slice(&cookie.to_be_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&len.to_be_bytes());
    req
}

#[test]
fn a_client_writing_before_it_reads_its_replies_does_not_deadlock_over_tls() {
    let t = harness_of(32 * MIB);
    let mut s = tls_client(&t.certs, "alice", started(&t));
    let r = option(&mut s, p::OPT_GO, &client::go_data("default", &[]));
    assert_eq!(r.last().unwrap().kind, p::REP_ACK);
    // 24 MiB of read replies the client does not read yet (more than the socket buffers
    // hold), then a 16 MiB write: the server must go on decrypting the write while its reply
    // writers wait for the client.
    const READS: u64 = 24;
    for i in 0..READS {
        s.write_all(&request(0, i, 0, MIB as u32)).unwrap();
    }
    s.write_all(&request(1, 1000, 0, 16 << 20)).unwrap();
    s.write_all(&vec![0x3c; 16 << 20]).unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < READS as usize + 1 {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(&h[4..8], &[0; 4], "a request failed");
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        if cookie < READS {
            let mut data = vec![0u8; MIB as usize];
            s.read_exact(&mut data).unwrap();
        }
        seen.push(cookie);
    }
    assert!(start.elapsed() < Duration::from_secs(30));
    let mut b = vec![0u8; 4096];
    t.h.volume.read(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0x3c));
}
