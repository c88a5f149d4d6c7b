//! A raw NBD client for tests: speaks the protocol byte by byte so tests can also break it.

use fss_nbd::protocol as p;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One option reply.
#[derive(Debug, Clone)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// A connected socket after the greeting (client flags sent: fixed newstyle, no zeroes).
pub fn greet(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    // A server that stops answering or reading fails the test instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    greet_on(&mut s);
    s
}

/// Read the greeting on any stream and send the client flags.
pub fn greet_on<S: Read + Write>(s: &mut S) {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    let hflags = u16::from_be_bytes([g[16], g[17]]);
    assert_eq!(hflags & p::FLAG_FIXED_NEWSTYLE, p::FLAG_FIXED_NEWSTYLE);
    s.write_all(&(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
}

pub fn send_option<S: Write>(s: &mut S, opt: u32, data: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

pub fn read_option_reply<S: Read>(s: &mut S) -> OptReply {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        p::OPTION_REPLY_MAGIC
    );
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).unwrap();
    OptReply { option, kind, data }
}

/// Send an option and read replies up to the final one (ACK or an error).
pub fn option<S: Read + Write>(s: &mut S, opt: u32, data: &[u8]) -> Vec<OptReply> {
    send_option(s, opt, data);
    let mut out = Vec::new();
    loop {
        let r = read_option_reply(s);
        assert_eq!(r.option, opt, "reply to the wrong option");
        let last = r.kind == p::REP_ACK || r.kind & p::REP_FLAG_ERROR != 0;
        out.push(r);
        if last {
            return out;
        }
    }
}

pub fn go_data(name: &str, items: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for i in items {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// A reply, reassembled.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub error: u32,
    pub message: String,
    /// Read data (holes filled with zeroes).
    pub data: Vec<u8>,
    /// Block status: (context id, descriptors).
    pub extents: Vec<(u32, Vec<(u32, u32)>)>,
    /// Chunk types seen, in order (empty for simple replies).
    pub chunk_types: Vec<u16>,
}

/// A client in transmission.
pub struct Client {
    pub s: UnixStream,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
    /// Context ids by name, from NBD_OPT_SET_META_CONTEXT.
    pub contexts: HashMap<String, u32>,
    pending: HashMap<u64, (u16, u64, u32)>,
    partial: HashMap<u64, Reply>,
    done: HashMap<u64, Reply>,
    next_cookie: u64,
}

impl Client {
    /// Negotiate and enter transmission on `export`.
    pub fn open(path: &Path, export: &str, structured: bool, contexts: &[&str]) -> Client {
        let mut s = greet(path);
        Self::negotiate(&mut s, export, structured, contexts);
        Self::go(s, export, structured, contexts)
    }

    fn negotiate(s: &mut UnixStream, export: &str, structured: bool, contexts: &[&str]) {
        if structured {
            let r = option(s, p::OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(r[0].kind, p::REP_ACK);
        }
        if !contexts.is_empty() {
            let r = option(s, p::OPT_SET_META_CONTEXT, &meta_data(export, contexts));
            assert_eq!(r.last().unwrap().kind, p::REP_ACK, "{r:?}");
        }
    }

    /// Send NBD_OPT_GO on a socket in option haggling (`contexts`: what was selected, to
    /// record their ids, which this server keeps stable).
    pub fn go(mut s: UnixStream, export: &str, structured: bool, contexts: &[&str]) -> Client {
        let replies = option(&mut s, p::OPT_GO, &go_data(export, &[p::INFO_BLOCK_SIZE]));
        let last = replies.last().unwrap();
        assert_eq!(last.kind, p::REP_ACK, "GO failed: {replies:?}");
        let mut c = Client::go_raw(s);
        c.structured = structured;
        for r in &replies {
            if r.kind == p::REP_INFO && u16::from_be_bytes([r.data[0], r.data[1]]) == p::INFO_EXPORT
            {
                c.size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                c.flags = u16::from_be_bytes([r.data[10], r.data[11]]);
            }
        }
        for (n, id) in [("base:allocation", 1u32), ("fss:preserved", 2u32)] {
            if contexts.contains(&n) {
                c.contexts.insert(n.to_string(), id);
            }
        }
        c
    }

    /// A client on a socket already in transmission, with simple replies.
    pub fn go_raw(s: UnixStream) -> Client {
        Client {
            s,
            structured: false,
            size: 0,
            flags: 0,
            contexts: HashMap::new(),
            pending: HashMap::new(),
            partial: HashMap::new(),
            done: HashMap::new(),
            next_cookie: 1,
        }
    }

    /// Send a request (with its payload, for writes); returns its cookie.
    pub fn send(&mut self, flags: u16, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut b = p::Request::encode(flags, cmd, cookie, offset, len).to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
        self.pending.insert(cookie, (cmd, offset, len));
        cookie
    }

    /// Record a request sent on the socket by other means, so that its reply can be read.
    pub fn expect(&mut self, cookie: u64, cmd: u16, offset: u64, len: u32) {
        self.pending.insert(cookie, (cmd, offset, len));
    }

    /// Wait for the reply to `cookie` (buffering other replies that arrive first).
    pub fn reply(&mut self, cookie: u64) -> Reply {
        loop {
            if let Some(r) = self.done.remove(&cookie) {
                return r;
            }
            self.read_one();
        }
    }

    /// Send and wait.
    pub fn call(&mut self, flags: u16, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> Reply {
        let c = self.send(flags, cmd, offset, len, payload);
        self.reply(c)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Reply {
        self.call(0, 0, offset, len, &[])
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Reply {
        self.call(0, 1, offset, data.len() as u32, data)
    }

    /// Read one simple reply or one chunk.
    fn read_one(&mut self) {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        let magic = u32::from_be_bytes(m);
        if magic == p::SIMPLE_REPLY_MAGIC {
            let mut h = [0u8; 12];
            self.s.read_exact(&mut h).unwrap();
            let error = u32::from_be_bytes(h[..4].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
            let (cmd, _, len) = self
                .pending
                .remove(&cookie)
                .expect("reply to unknown cookie");
            let mut r = Reply {
                error,
                ..Reply::default()
            };
            if cmd == 0 && error == 0 {
                assert!(
                    !self.structured,
                    "simple reply to a read with structured replies"
                );
                r.data = vec![0u8; len as usize];
                self.s.read_exact(&mut r.data).unwrap();
            }
            self.done.insert(cookie, r);
            return;
        }
        assert_eq!(
            magic,
            p::STRUCTURED_REPLY_MAGIC,
            "bad reply magic {magic:#x}"
        );
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let flags = u16::from_be_bytes([h[0], h[1]]);
        let kind = u16::from_be_bytes([h[2], h[3]]);
        let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).unwrap();
        let &(cmd, req_off, req_len) = self.pending.get(&cookie).expect("chunk for unknown cookie");
        let r = self.partial.entry(cookie).or_default();
        if cmd == 0 && r.data.is_empty() {
            r.data = vec![0u8; req_len as usize];
        }
        r.chunk_types.push(kind);
        match kind {
            p::REPLY_TYPE_NONE => assert_eq!(len, 0),
            p::REPLY_TYPE_OFFSET_DATA => {
                let off = u64::from_be_bytes(payload[..8].try_into().unwrap());
                let d = &payload[8..];
                let at = (off - req_off) as usize;
                assert!(
                    at + d.len() <= req_len as usize,
                    "data chunk outside the request"
                );
                r.data[at..at + d.len()].copy_from_slice(d);
            }
            p::REPLY_TYPE_OFFSET_HOLE => {
                let off = u64::from_be_bytes(payload[..8].try_into().unwrap());
                let n = u32::from_be_bytes(payload[8..12].try_into().unwrap());
                let at = (off - req_off) as usize;
                assert!(n > 0 && at + n as usize <= req_len as usize);
                r.data[at..at + n as usize].fill(0);
            }
            p::REPLY_TYPE_BLOCK_STATUS => {
                let id = u32::from_be_bytes(payload[..4].try_into().unwrap());
                let d = payload[4..]
                    .chunks(8)
                    .map(|c| {
                        (
                            u32::from_be_bytes(c[..4].try_into().unwrap()),
                            u32::from_be_bytes(c[4..8].try_into().unwrap()),
                        )
                    })
                    .collect();
                r.extents.push((id, d));
            }
            p::REPLY_TYPE_ERROR | p::REPLY_TYPE_ERROR_OFFSET => {
                r.error = u32::from_be_bytes(payload[..4].try_into().unwrap());
                let ml = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                r.message = String::from_utf8(payload[6..6 + ml].to_vec()).unwrap();
            }
            other => panic!("unknown chunk type {other}"),
        }
        if flags & p::REPLY_FLAG_DONE != 0 {
            let r = self.partial.remove(&cookie).unwrap();
            self.pending.remove(&cookie);
            self.done.insert(cookie, r);
        }
    }

    /// Whether the server closed the connection (waits up to `limit` for it).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        let r = match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => panic!("unexpected data from the server"),
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        r
    }

    /// Send NBD_CMD_DISC.
    pub fn disconnect(mut self) {
        let b = p::Request::encode(0, 2, 0, 0, 0);
        self.s.write_all(&b).unwrap();
        assert!(self.closed_within(Duration::from_secs(10)));
    }
}
