//! Admission of new connections: which unfinished handshakes to close so that idle sockets
//! cannot lock well-behaved clients out.
//!
//! A connection that has not chosen an export yet is "half-open". Rather than refusing a new
//! connection when too many are half-open (which lets a few hundred idle sockets lock every
//! client out until they time out), the oldest half-open connections are closed to make room:
//! first the oldest of the same peer when that peer is over its own limit, then the oldest
//! anywhere when the pool of half-open connections is full. A well-behaved client finishes its
//! handshake in milliseconds, so it is never the oldest for long. Only when every connection is
//! in transmission (clients that did finish a handshake) is a new one refused.

use std::time::Instant;

/// The limits [`admit`] applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections at once, half-open or not.
    pub max_connections: usize,
    /// Half-open connections at once, from every peer.
    pub max_handshakes: usize,
    /// Half-open connections at once from one peer.
    pub max_handshakes_per_peer: usize,
}

/// One half-open connection, as [`admit`] sees it.
#[derive(Debug, Clone)]
pub(crate) struct HalfOpen<'a> {
    /// The connection's id.
    pub id: u64,
    /// Its peer (see `Stream::peer_key`).
    pub peer: &'a str,
    /// When it was accepted.
    pub since: Instant,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Serve it, after closing these half-open connections (id, why).
    Accept(Vec<(u64, String)>),
    /// Close it, for this reason.
    Refuse(String),
}

/// Decide on a new connection from `peer`, with `open` connections registered (not counting
/// those already being closed) of which `half_open` are half-open.
pub(crate) fn admit(open: usize, half_open: &[HalfOpen<'_>], peer: &str, l: Limits) -> Admit {
    let mut by_age: Vec<&HalfOpen<'_>> = half_open.iter().collect();
    by_age.sort_by_key(|h| (h.since, h.id));
    let mut evict: Vec<(u64, String)> = Vec::new();
    let per_peer = l.max_handshakes_per_peer.max(1);
    let same: Vec<u64> = by_age
        .iter()
        .filter(|h| h.peer == peer)
        .map(|h| h.id)
        .collect();
    for id in same.iter().take((same.len() + 1).saturating_sub(per_peer)) {
        let why = format!(
            "{per_peer} handshakes from this peer are unfinished (the limit per peer); \
             closing its oldest"
        );
        evict.push((*id, why));
    }
    let peer_evicted = evict.len();
    let mut rest = by_age
        .iter()
        .filter(|h| h.peer != peer || !same[..peer_evicted].contains(&h.id));
    let mut half_left = half_open.len() - evict.len();
    let mut open_left = open - evict.len();
    while half_left >= l.max_handshakes.max(1) || open_left >= l.max_connections.max(1) {
        let Some(h) = rest.next() else {
            return Admit::Refuse(format!(
                "{} NBD connections are open, every one serving an export (the limit); \
                 closing the new one",
                l.max_connections
            ));
        };
        let why = if half_left >= l.max_handshakes.max(1) {
            format!(
                "{} handshakes are unfinished (the limit for all peers); closing the oldest",
                l.max_handshakes
            )
        } else {
            format!(
                "{} NBD connections are open (the limit); closing the oldest unfinished \
                 handshake",
                l.max_connections
            )
        };
        evict.push((h.id, why));
        half_left -= 1;
        open_left -= 1;
    }
    Admit::Accept(evict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        max_connections: 10,
        max_handshakes: 6,
        max_handshakes_per_peer: 3,
    };

    fn half_open<'a>(peers: &[&'a str]) -> Vec<HalfOpen<'a>> {
        let t0 = Instant::now();
        peers
            .iter()
            .enumerate()
            .map(|(i, p)| HalfOpen {
                id: i as u64,
                peer: p,
                since: t0 + Duration::from_millis(i as u64),
            })
            .collect()
    }

    fn evicted(a: &Admit) -> Vec<u64> {
        match a {
            Admit::Accept(v) => v.iter().map(|(id, _)| *id).collect(),
            Admit::Refuse(why) => panic!("refused: {why}"),
        }
    }

    #[test]
    fn under_every_limit_nothing_is_closed() {
        let h = half_open(&["a", "a", "b"]);
        assert_eq!(admit(5, &h, "a", LIMITS), Admit::Accept(vec![]));
    }

    #[test]
    fn a_peer_over_its_limit_loses_its_own_oldest() {
        let h = half_open(&["b", "a", "c", "a", "a"]);
        assert_eq!(evicted(&admit(5, &h, "a", LIMITS)), vec![1]);
        // Already further over (a lower limit since): back to one under the limit.
        let h = half_open(&["a", "a", "a", "a", "b"]);
        assert_eq!(evicted(&admit(5, &h, "a", LIMITS)), vec![0, 1]);
    }

    #[test]
    fn a_full_pool_loses_its_oldest_whoever_the_new_peer_is() {
        let h = half_open(&["a", "b", "c", "d", "e", "f"]);
        assert_eq!(evicted(&admit(6, &h, "g", LIMITS)), vec![0]);
        // The per-peer eviction also makes room in the pool.
        let h = half_open(&["a", "b", "g", "g", "g", "f"]);
        assert_eq!(evicted(&admit(6, &h, "g", LIMITS)), vec![2]);
    }

    #[test]
    fn full_of_connections_closes_a_half_open_one_or_refuses() {
        let h = half_open(&["a", "b"]);
        assert_eq!(evicted(&admit(10, &h, "c", LIMITS)), vec![0]);
        match admit(10, &[], "c", LIMITS) {
            Admit::Refuse(why) => assert!(why.contains("10 NBD connections"), "{why}"),
            Admit::Accept(v) => panic!("accepted over the limit, closing {v:?}"),
        }
    }
}
