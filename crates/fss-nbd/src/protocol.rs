//! NBD protocol constants and wire structures, as pure encoding and decoding (no I/O).
//!
//! Names and values follow the NBD protocol document (`doc/proto.md` of the reference
//! implementation). All integers are big-endian on the wire.

mod consts;

pub use consts::*;

/// The error values the protocol allows in replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdErrno {
    /// `NBD_EPERM`: operation not permitted (writes to a read-only export).
    Perm,
    /// `NBD_EIO`: input/output error.
    Io,
    /// `NBD_ENOMEM`: cannot allocate memory.
    NoMem,
    /// `NBD_EINVAL`: invalid argument (out of range, unknown command or flag).
    Inval,
    /// `NBD_ENOSPC`: no space left.
    NoSpc,
    /// `NBD_EOVERFLOW`: value too large.
    Overflow,
    /// `NBD_ENOTSUP`: operation not supported (fast zero).
    NotSup,
    /// `NBD_ESHUTDOWN`: the server is shutting down.
    Shutdown,
}

impl NbdErrno {
    /// The value on the wire.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            NbdErrno::Perm => 1,
            NbdErrno::Io => 5,
            NbdErrno::NoMem => 12,
            NbdErrno::Inval => 22,
            NbdErrno::NoSpc => 28,
            NbdErrno::Overflow => 75,
            NbdErrno::NotSup => 95,
            NbdErrno::Shutdown => 108,
        }
    }
}

/// Transmission command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (followed by `length` bytes of payload).
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Anything else.
    Unknown(u16),
}

impl Command {
    /// Decode a command type.
    #[must_use]
    pub fn from_wire(v: u16) -> Self {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// A transmission request header (the payload of a write follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub command: Command,
    /// Opaque client cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (of the payload for writes).
    pub length: u32,
}

impl Request {
    /// Decode a request header; `Err` carries the wrong magic.
    ///
    /// # Errors
    /// The magic is not [`REQUEST_MAGIC`].
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, u32> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Request {
            flags: be16(b, 4),
            command: Command::from_wire(be16(b, 6)),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    /// Encode a request header (for tests and clients).
    #[must_use]
    pub fn encode(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&command.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&length.to_be_bytes());
        b
    }
}

/// An option request header (its data follows on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub option: u32,
    /// Length of the option data.
    pub length: u32,
}

impl OptionHeader {
    /// Decode an option header; `Err` carries the wrong magic.
    ///
    /// # Errors
    /// The magic is not [`IHAVEOPT`].
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Result<Self, u64> {
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(magic);
        }
        Ok(OptionHeader {
            option: be32(b, 8),
            length: be32(b, 12),
        })
    }
}

/// The server's greeting: magics and handshake flags.
#[must_use]
pub fn greeting(handshake_flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// An option reply: header and data.
#[must_use]
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&len32(data.len()).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The data of an `NBD_REP_SERVER` reply.
#[must_use]
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len() + description.len());
    b.extend_from_slice(&len32(name.len()).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(description.as_bytes());
    b
}

/// The data of an `NBD_REP_INFO` / `NBD_INFO_EXPORT` reply.
#[must_use]
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// The data of an `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE` reply.
#[must_use]
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&minimum.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&maximum.to_be_bytes());
    b
}

/// The data of an `NBD_REP_INFO` reply carrying a string (`NBD_INFO_NAME`,
/// `NBD_INFO_DESCRIPTION`).
#[must_use]
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let s = truncate_str(s, MAX_STRING);
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// The data of an `NBD_REP_META_CONTEXT` reply.
#[must_use]
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and the padding unless omitted.
#[must_use]
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(b.len() + EXPORT_NAME_PADDING, 0);
    }
    b
}

/// A simple reply header (read data, if any, follows it).
#[must_use]
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header.
#[must_use]
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// One chunk of a structured reply, borrowing any bulk data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    Data {
        /// Export offset of the first byte.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    Hole {
        /// Export offset of the hole.
        offset: u64,
        /// Its length (nonzero).
        len: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`: one context's descriptors (length, flags).
    BlockStatus {
        /// The context id chosen at `NBD_OPT_SET_META_CONTEXT`.
        context: u32,
        /// Consecutive extents as (length, status flags).
        extents: &'a [(u32, u32)],
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// The error value.
        errno: NbdErrno,
        /// A message for people (cut to the protocol's limit).
        message: &'a str,
    },
}

impl Chunk<'_> {
    /// The chunk header and every byte of the payload except bulk read data, which
    /// [`Chunk::bulk`] returns so that it can be written without copying.
    #[must_use]
    pub fn encode_head(&self, flags: u16, cookie: u64) -> Vec<u8> {
        let (kind, fixed) = match self {
            Chunk::None => (REPLY_TYPE_NONE, Vec::new()),
            Chunk::Data { offset, .. } => (REPLY_TYPE_OFFSET_DATA, offset.to_be_bytes().to_vec()),
            Chunk::Hole { offset, len } => {
                let mut p = offset.to_be_bytes().to_vec();
                p.extend_from_slice(&len.to_be_bytes());
                (REPLY_TYPE_OFFSET_HOLE, p)
            }
            Chunk::BlockStatus { context, extents } => {
                let mut p = Vec::with_capacity(4 + 8 * extents.len());
                p.extend_from_slice(&context.to_be_bytes());
                for (len, state) in *extents {
                    p.extend_from_slice(&len.to_be_bytes());
                    p.extend_from_slice(&state.to_be_bytes());
                }
                (REPLY_TYPE_BLOCK_STATUS, p)
            }
            Chunk::Error { errno, message } => {
                // The message length field is 16 bits and the protocol caps strings at 4096.
                let m = truncate_str(message, MAX_STRING);
                let mut p = Vec::with_capacity(6 + m.len());
                p.extend_from_slice(&errno.code().to_be_bytes());
                p.extend_from_slice(&(m.len() as u16).to_be_bytes());
                p.extend_from_slice(m.as_bytes());
                (REPLY_TYPE_ERROR, p)
            }
        };
        let total = fixed.len() + self.bulk().len();
        let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + fixed.len());
        b.extend_from_slice(&chunk_header(flags, kind, cookie, len32(total)));
        b.extend_from_slice(&fixed);
        b
    }

    /// Bulk data that follows the head on the wire (read data; empty for other chunks).
    #[must_use]
    pub fn bulk(&self) -> &[u8] {
        match self {
            Chunk::Data { data, .. } => data,
            _ => &[],
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
#[must_use]
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A length as the protocol's 32-bit field. Callers bound every length far below 4 GiB; a
/// longer one would be a bug, and saturating keeps the stream parseable rather than panicking.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Big-endian u16 at `at` (callers pass fixed-size arrays long enough).
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian u32 at `at`.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Big-endian u64 at `at`.
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A cursor over option data that never reads past its end.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The next `n` bytes, if there are that many.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// The next big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| be32(b, 0))
    }

    /// A string of `n` bytes: valid UTF-8, no NUL, at most [`MAX_STRING`] bytes.
    pub fn string(&mut self, n: usize) -> Option<&'a str> {
        if n > MAX_STRING {
            return None;
        }
        let s = std::str::from_utf8(self.bytes(n)?).ok()?;
        (!s.contains('\0')).then_some(s)
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name (empty: the default export).
    pub name: String,
    /// The information items asked for.
    pub items: Vec<u16>,
}

impl InfoRequest {
    /// Parse the option data; `None` when it is malformed.
    #[must_use]
    pub fn decode(data: &[u8]) -> Option<Self> {
        let mut r = Reader::new(data);
        let n = r.u32()? as usize;
        let name = r.string(n)?.to_string();
        let count = usize::from(r.u16()?);
        if r.remaining() != count * 2 {
            return None;
        }
        let items = (0..count).map(|_| r.u16()).collect::<Option<Vec<_>>>()?;
        Some(InfoRequest { name, items })
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// The export name.
    pub name: String,
    /// The queries (each `namespace:leaf`).
    pub queries: Vec<String>,
}

impl MetaRequest {
    /// Parse the option data; `None` when it is malformed.
    #[must_use]
    pub fn decode(data: &[u8]) -> Option<Self> {
        let mut r = Reader::new(data);
        let n = r.u32()? as usize;
        let name = r.string(n)?.to_string();
        let count = r.u32()? as usize;
        // Each query takes at least 4 bytes: a count beyond that is malformed, and checking
        // first keeps a hostile count from sizing an allocation.
        if count > r.remaining() / 4 {
            return None;
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            let qn = r.u32()? as usize;
            queries.push(r.string(qn)?.to_string());
        }
        if r.remaining() != 0 {
            return None;
        }
        Some(MetaRequest { name, queries })
    }
}

#[cfg(test)]
mod tests;
