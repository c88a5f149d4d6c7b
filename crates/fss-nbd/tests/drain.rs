//! Draining for a hand-over: requests already sent are answered, then the connection closes;
//! a client still negotiating is closed; nothing new is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::{greet, Client};
use common::Harness;
use std::time::Duration;

#[test]
fn a_drain_answers_what_was_sent_then_closes() {
    let h = Harness::new(8 << 20);
    let mut c = Client::open(&h.socket, "default", false, &[]);
    let mut half = greet(&h.socket);
    // Sixteen writes in flight, none of their replies read yet.
    let cookies: Vec<u64> = (0..16u8)
        .map(|i| c.send(0, 1, u64::from(i) << 16, 65536, &vec![i + 1; 65536]))
        .collect();
    // The first reply proves the server is reading them.
    assert_eq!(c.reply(cookies[0]).error, 0);
    let told = h.server.shutdown_handle().drain();
    assert_eq!(told, 2, "the serving and the negotiating connection");
    for cookie in &cookies[1..] {
        assert_eq!(c.reply(*cookie).error, 0, "every request read is answered");
    }
    assert!(c.closed_within(Duration::from_secs(10)));
    let mut b = [0u8; 1];
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        std::io::Read::read(&mut half, &mut b).unwrap_or(0),
        0,
        "a negotiating client is closed"
    );
    assert!(h.server.wait_idle(Duration::from_secs(10)));
    let bytes = h.volume_bytes();
    for i in 0..16u8 {
        let at = usize::from(i) << 16;
        assert!(
            bytes[at..at + 65536].iter().all(|&x| x == i + 1),
            "write {i}"
        );
    }
}
