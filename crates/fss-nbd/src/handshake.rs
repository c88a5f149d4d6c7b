//! Fixed newstyle negotiation: the greeting, client flags, and option haggling until the client
//! chooses an export (`NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`), aborts, or goes away.
//!
//! Options handled: `EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS` (acknowledged when TLS is
//! offered, after which the caller upgrades the stream and calls [`resume`]; refused with
//! `NBD_REP_ERR_POLICY` otherwise), `INFO`, `GO` (with `NBD_INFO_EXPORT`,
//! `NBD_INFO_BLOCK_SIZE` always, `NBD_INFO_NAME` and `NBD_INFO_DESCRIPTION` on request),
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`. Anything else gets
//! `NBD_REP_ERR_UNSUP` and haggling goes on. When TLS is required and not yet active
//! (FORCEDTLS), every option but `STARTTLS` and `ABORT` is answered `NBD_REP_ERR_TLS_REQD`,
//! and `EXPORT_NAME` (which has no error reply) ends the session.

use crate::error::ConnError;
use crate::meta_context::{self, MetaContext};
use crate::protocol::{self as p, InfoRequest, MetaRequest, OptionHeader};
use crate::stream::{discard, read_message};
use crate::{MAX_PAYLOAD, MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE};
use fss_core::export::{Catalog, Export};
use std::io::{Read, Write};

/// The largest option this server reads whole. Its largest real options are a GO with a
/// 4096-byte name, or a meta-context request with a few queries.
const MAX_OPTION_LEN: u32 = 64 * 1024;

/// Options larger than [`MAX_OPTION_LEN`] but at most this are skipped and refused; larger
/// ones end the connection (the protocol lets a server treat them as a denial of service).
const MAX_SKIPPED_OPTION_LEN: u32 = MAX_PAYLOAD;

/// The name `NBD_OPT_EXPORT_NAME` / `NBD_OPT_GO` with an empty name stands for.
pub const DEFAULT_EXPORT: &str = "default";

/// What the negotiation settled on.
pub(crate) struct Negotiated {
    /// The export, held for the whole connection.
    pub export: Export,
    /// Its canonical name.
    pub name: String,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// The metadata contexts selected for this export (empty: no block status).
    pub contexts: Vec<MetaContext>,
}

/// How option haggling ended.
pub(crate) enum Outcome {
    /// The client chose an export.
    Transmission(Negotiated),
    /// The client aborted or went away; the reason is for the log.
    Ended(&'static str),
    /// `NBD_OPT_STARTTLS` was acknowledged: upgrade the stream, then [`resume`] with this.
    StartTls(Resume),
}

/// What survives a TLS upgrade: only the client's flags (options negotiated before it are
/// forgotten, as they could have been tampered with).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume {
    no_zeroes: bool,
}

/// TLS on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsOffer {
    /// Not offered (`NBD_OPT_STARTTLS` gets `NBD_REP_ERR_POLICY` with this sentence).
    Refused(&'static str),
    /// Offered; the client may also stay in plaintext.
    Optional,
    /// Required before anything else (FORCEDTLS).
    Required,
    /// Already active.
    Active,
}

/// What the negotiation needs from the server.
pub(crate) struct Context<'a> {
    /// Where exports are found.
    pub catalog: &'a dyn Catalog,
    /// Whether the server is shutting down (options then get `NBD_REP_ERR_SHUTDOWN`).
    pub shutting_down: &'a dyn Fn() -> bool,
    /// Called with the export's name just before the reply that lets the client use it, so
    /// that the export counts as in use before any request can reach it.
    pub chosen: &'a dyn Fn(&str),
    /// Whether TLS is offered, required or already active.
    pub tls: TlsOffer,
}

/// The transmission flags an export gets.
pub(crate) fn export_flags(export: &Export, structured: bool) -> u16 {
    let mut f = p::FLAG_HAS_FLAGS
        | p::FLAG_SEND_FLUSH
        | p::FLAG_SEND_FUA
        | p::FLAG_CAN_MULTI_CONN
        | p::FLAG_SEND_CACHE;
    if structured {
        f |= p::FLAG_SEND_DF;
    }
    if export.is_read_only() {
        f |= p::FLAG_READ_ONLY;
    } else {
        f |= p::FLAG_SEND_TRIM | p::FLAG_SEND_WRITE_ZEROES | p::FLAG_SEND_FAST_ZERO;
    }
    f
}

/// The export a client's name selects: the empty name is the volume `default` if there is one.
pub(crate) fn resolve(catalog: &dyn Catalog, name: &str) -> Option<Export> {
    if name.is_empty() {
        match catalog.lookup(DEFAULT_EXPORT) {
            Some(e @ Export::Volume(_)) => Some(e),
            _ => None,
        }
    } else {
        catalog.lookup(name)
    }
}

fn unknown_export_message(name: &str) -> String {
    if name.is_empty() {
        format!("there is no default export (no volume named '{DEFAULT_EXPORT}'); name one")
    } else {
        format!("there is no export named '{}'", p::truncate_str(name, 256))
    }
}

/// State kept across options.
struct Haggle {
    structured: bool,
    /// The export (canonical name) and contexts of the last `NBD_OPT_SET_META_CONTEXT`.
    meta: Option<(String, Vec<MetaContext>)>,
    no_zeroes: bool,
}

impl Haggle {
    fn finish(self, export: Export) -> Negotiated {
        let name = export.name().to_string();
        let contexts = match self.meta {
            Some((n, c)) if n == name => c,
            _ => Vec::new(),
        };
        Negotiated {
            export,
            name,
            structured: self.structured,
            contexts,
        }
    }
}

fn reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    w.write_all(&p::option_reply(option, kind, data))
}

fn refuse(w: &mut impl Write, option: u32, kind: u32, message: &str) -> std::io::Result<()> {
    reply(
        w,
        option,
        kind,
        p::truncate_str(message, p::MAX_STRING).as_bytes(),
    )
}

/// Run the negotiation on a fresh connection.
///
/// # Errors
/// The stream broke, or the client broke a rule that ends the session.
pub(crate) fn negotiate(
    rd: &mut impl Read,
    w: &mut impl Write,
    ctx: &Context<'_>,
) -> Result<Outcome, ConnError> {
    w.write_all(&p::greeting(p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES))?;
    let mut cf = [0u8; 4];
    if !read_message(rd, &mut cf)? {
        return Ok(Outcome::Ended("the client closed before sending its flags"));
    }
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & p::FLAG_C_NO_ZEROES != 0;
    resume(rd, w, ctx, Resume { no_zeroes })
}

/// Go on with option haggling from a fresh state (after the greeting, or on the stream a TLS
/// upgrade made).
///
/// # Errors
/// As [`negotiate`].
pub(crate) fn resume(
    rd: &mut impl Read,
    w: &mut impl Write,
    ctx: &Context<'_>,
    from: Resume,
) -> Result<Outcome, ConnError> {
    let mut st = Haggle {
        structured: false,
        meta: None,
        no_zeroes: from.no_zeroes,
    };
    loop {
        let mut h = [0u8; p::OPTION_HEADER_LEN];
        if !read_message(rd, &mut h)? {
            return Ok(Outcome::Ended("the client closed during option haggling"));
        }
        let hdr = OptionHeader::decode(&h).map_err(|found| ConnError::BadMagic {
            found,
            expected: "IHAVEOPT",
        })?;
        let opt = hdr.option;
        if hdr.length > MAX_OPTION_LEN {
            if hdr.length > MAX_SKIPPED_OPTION_LEN || opt == p::OPT_EXPORT_NAME {
                return Err(ConnError::OptionTooLarge(hdr.length));
            }
            discard(rd, u64::from(hdr.length))?;
            let kind = if ctx.tls == TlsOffer::Required && opt != p::OPT_STARTTLS {
                p::REP_ERR_TLS_REQD
            } else if known(opt) {
                p::REP_ERR_TOO_BIG
            } else {
                p::REP_ERR_UNSUP
            };
            refuse(w, opt, kind, "the option is too large")?;
            continue;
        }
        let mut data = vec![0u8; hdr.length as usize];
        rd.read_exact(&mut data)?;
        if (ctx.shutting_down)() && opt != p::OPT_ABORT {
            if opt == p::OPT_EXPORT_NAME {
                return Ok(Outcome::Ended("the server is shutting down"));
            }
            refuse(w, opt, p::REP_ERR_SHUTDOWN, "the server is shutting down")?;
            continue;
        }
        if ctx.tls == TlsOffer::Required && !matches!(opt, p::OPT_STARTTLS | p::OPT_ABORT) {
            if opt == p::OPT_EXPORT_NAME {
                return Err(ConnError::TlsRequired);
            }
            refuse(w, opt, p::REP_ERR_TLS_REQD, TLS_REQUIRED)?;
            continue;
        }
        match opt {
            p::OPT_EXPORT_NAME => return export_name(w, ctx, st, &data),
            p::OPT_ABORT => {
                // The client may already be gone; the session ends either way.
                let _ = reply(w, opt, p::REP_ACK, &[]);
                return Ok(Outcome::Ended("the client aborted the negotiation"));
            }
            p::OPT_LIST => list(w, ctx, &data)?,
            p::OPT_STARTTLS => {
                if starttls(w, ctx.tls, &data)? {
                    return Ok(Outcome::StartTls(Resume {
                        no_zeroes: st.no_zeroes,
                    }));
                }
            }
            p::OPT_INFO | p::OPT_GO => {
                if let Some(export) = info(w, ctx, &st, opt, &data)? {
                    return Ok(Outcome::Transmission(st.finish(export)));
                }
            }
            p::OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    st.structured = true;
                    reply(w, opt, p::REP_ACK, &[])?;
                } else {
                    refuse(
                        w,
                        opt,
                        p::REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                }
            }
            p::OPT_LIST_META_CONTEXT | p::OPT_SET_META_CONTEXT => {
                meta(w, ctx, &mut st, opt, &data)?;
            }
            _ => refuse(
                w,
                opt,
                p::REP_ERR_UNSUP,
                &format!("option {opt} is not supported by this server"),
            )?,
        }
    }
}

/// The refusal of options before the upgrade when TLS is required.
const TLS_REQUIRED: &str = "this server requires TLS: send NBD_OPT_STARTTLS first (an nbds:// \
    URI with tls-certificates=DIR, or qemu's tls-creds)";

/// `NBD_OPT_STARTTLS`: whether it was acknowledged (the stream is then upgraded).
fn starttls(w: &mut impl Write, tls: TlsOffer, data: &[u8]) -> std::io::Result<bool> {
    let opt = p::OPT_STARTTLS;
    if !data.is_empty() {
        refuse(w, opt, p::REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")?;
        return Ok(false);
    }
    match tls {
        TlsOffer::Refused(why) => refuse(w, opt, p::REP_ERR_POLICY, why)?,
        TlsOffer::Active => refuse(w, opt, p::REP_ERR_INVALID, "TLS is already active")?,
        TlsOffer::Optional | TlsOffer::Required => {
            reply(w, opt, p::REP_ACK, &[])?;
            return Ok(true);
        }
    }
    Ok(false)
}

fn known(opt: u32) -> bool {
    matches!(
        opt,
        p::OPT_EXPORT_NAME
            | p::OPT_ABORT
            | p::OPT_LIST
            | p::OPT_STARTTLS
            | p::OPT_INFO
            | p::OPT_GO
            | p::OPT_STRUCTURED_REPLY
            | p::OPT_LIST_META_CONTEXT
            | p::OPT_SET_META_CONTEXT
    )
}

fn export_name(
    w: &mut impl Write,
    ctx: &Context<'_>,
    st: Haggle,
    data: &[u8],
) -> Result<Outcome, ConnError> {
    let name = p::Reader::new(data)
        .string(data.len())
        .ok_or(ConnError::BadExportName)?;
    let export = resolve(ctx.catalog, name).ok_or_else(|| ConnError::UnknownExport(name.into()))?;
    let flags = export_flags(&export, st.structured);
    (ctx.chosen)(export.name());
    w.write_all(&p::export_name_reply(export.len(), flags, st.no_zeroes))?;
    Ok(Outcome::Transmission(st.finish(export)))
}

fn list(w: &mut impl Write, ctx: &Context<'_>, data: &[u8]) -> std::io::Result<()> {
    if !data.is_empty() {
        return refuse(
            w,
            p::OPT_LIST,
            p::REP_ERR_INVALID,
            "NBD_OPT_LIST takes no data",
        );
    }
    for e in ctx.catalog.list() {
        let description = p::truncate_str(&e.description, p::MAX_STRING);
        reply(
            w,
            p::OPT_LIST,
            p::REP_SERVER,
            &p::rep_server(&e.name, description),
        )?;
    }
    reply(w, p::OPT_LIST, p::REP_ACK, &[])
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO`: the export chosen, if the option succeeded.
fn info(
    w: &mut impl Write,
    ctx: &Context<'_>,
    st: &Haggle,
    opt: u32,
    data: &[u8],
) -> std::io::Result<Option<Export>> {
    let Some(req) = InfoRequest::decode(data) else {
        refuse(
            w,
            opt,
            p::REP_ERR_INVALID,
            "malformed NBD_OPT_INFO/NBD_OPT_GO data",
        )?;
        return Ok(None);
    };
    let Some(export) = resolve(ctx.catalog, &req.name) else {
        refuse(
            w,
            opt,
            p::REP_ERR_UNKNOWN,
            &unknown_export_message(&req.name),
        )?;
        return Ok(None);
    };
    let flags = export_flags(&export, st.structured);
    reply(w, opt, p::REP_INFO, &p::info_export(export.len(), flags))?;
    reply(
        w,
        opt,
        p::REP_INFO,
        &p::info_block_size(MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD),
    )?;
    if req.items.contains(&p::INFO_NAME) {
        reply(
            w,
            opt,
            p::REP_INFO,
            &p::info_string(p::INFO_NAME, export.name()),
        )?;
    }
    if req.items.contains(&p::INFO_DESCRIPTION) {
        let description = ctx
            .catalog
            .list()
            .into_iter()
            .find(|e| e.name == export.name())
            .map(|e| e.description)
            .unwrap_or_default();
        if !description.is_empty() {
            reply(
                w,
                opt,
                p::REP_INFO,
                &p::info_string(p::INFO_DESCRIPTION, &description),
            )?;
        }
    }
    if opt == p::OPT_GO {
        (ctx.chosen)(export.name());
    }
    reply(w, opt, p::REP_ACK, &[])?;
    Ok((opt == p::OPT_GO).then_some(export))
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
fn meta(
    w: &mut impl Write,
    ctx: &Context<'_>,
    st: &mut Haggle,
    opt: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let set = opt == p::OPT_SET_META_CONTEXT;
    if set {
        // A SET replaces the selection, even when it fails.
        st.meta = None;
        if !st.structured {
            return refuse(
                w,
                opt,
                p::REP_ERR_INVALID,
                "negotiate NBD_OPT_STRUCTURED_REPLY before selecting metadata contexts",
            );
        }
    }
    let Some(req) = MetaRequest::decode(data) else {
        return refuse(
            w,
            opt,
            p::REP_ERR_INVALID,
            "malformed metadata context request",
        );
    };
    let Some(export) = resolve(ctx.catalog, &req.name) else {
        return refuse(
            w,
            opt,
            p::REP_ERR_UNKNOWN,
            &unknown_export_message(&req.name),
        );
    };
    let found = if set {
        meta_context::select(ctx.catalog, &export, &req.queries)
    } else {
        meta_context::list(ctx.catalog, &export, &req.queries)
    };
    let contexts = match found {
        Ok(c) => c,
        Err(bad) => {
            let m = format!(
                "metadata context query '{}' lacks 'namespace:'",
                p::truncate_str(&bad.0, 256)
            );
            return refuse(w, opt, p::REP_ERR_INVALID, &m);
        }
    };
    for c in &contexts {
        // Listing replies carry id 0, as the protocol asks.
        let id = if set { c.id() } else { 0 };
        reply(
            w,
            opt,
            p::REP_META_CONTEXT,
            &p::rep_meta_context(id, c.name()),
        )?;
    }
    if set {
        st.meta = Some((export.name().to_string(), contexts));
    }
    reply(w, opt, p::REP_ACK, &[])
}
