//! TLS for `fss serve`'s NBD over TCP: the certificates read at start, and read again on
//! SIGHUP (new connections use them; open ones keep theirs). A new process (`fss restart`)
//! reads them anyway.

use fssd::config::{NbdTls, ServeOptions, TlsChoice};
use fssd::DaemonError;
use std::path::PathBuf;
use std::sync::Arc;

/// `fss serve`'s TLS flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// TLS for NBD over TCP from DIR/ca-cert.pem, server-cert.pem and server-key.pem (the
    /// layout qemu and nbdkit use); reloaded on SIGHUP.
    #[arg(long, value_name = "DIR", value_parser = crate::path_arg)]
    tls_certificates: Option<PathBuf>,
    /// off (plaintext only), on (offered), or require (the default with certificates:
    /// plaintext clients are refused).
    #[arg(long, value_name = "MODE", value_parser = TlsChoice::parse)]
    tls: Option<TlsChoice>,
    /// Require a client certificate signed by ca-cert.pem.
    #[arg(long)]
    tls_verify_peer: bool,
    /// Accept only client certificates whose subject CN is NAME (repeatable; needs
    /// --tls-verify-peer).
    #[arg(long, value_name = "CN=NAME", value_parser = fss_nbd::tls::parse_authz)]
    tls_authz: Vec<String>,
}

impl TlsArgs {
    /// The daemon's TLS options, checked against the TCP address (`--nbd-listen`).
    ///
    /// # Errors
    /// Flags at odds, or TCP that would be plaintext without `--tls off`.
    pub fn checked(self, nbd_listen: Option<&str>) -> anyhow::Result<NbdTls> {
        let t = NbdTls {
            mode: self.tls,
            certificates: self.tls_certificates,
            verify_peer: self.tls_verify_peer,
            authz: self.tls_authz,
        };
        t.check(nbd_listen).map_err(|e| anyhow::anyhow!(e))?;
        Ok(t)
    }
}

/// The loaded TLS configuration and the thread that reloads it on SIGHUP.
pub struct Reloader {
    tls: Arc<fss_nbd::Tls>,
    signals: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Load the certificates `opts` names, if any, and reload them on SIGHUP.
///
/// # Errors
/// The certificates cannot be used (the message names the file and what to do), or the
/// signal handler cannot be installed.
pub fn start(opts: &ServeOptions) -> fssd::Result<Option<Reloader>> {
    let t = &opts.nbd_tls;
    let mode = match t.check(opts.nbd_listen.as_deref()) {
        Ok(Some(TlsChoice::On)) => fss_nbd::TlsMode::On,
        Ok(Some(TlsChoice::Require)) => fss_nbd::TlsMode::Require,
        Ok(Some(TlsChoice::Off) | None) => return Ok(None),
        Err(e) => return Err(DaemonError::invalid(e)),
    };
    let Some(dir) = t.certificates.clone() else {
        return Ok(None);
    };
    let settings = fss_nbd::TlsSettings {
        dir,
        mode,
        verify_peer: t.verify_peer,
        authz: t.authz.clone(),
    };
    let tls = fss_nbd::Tls::load(settings)
        .map_err(|e| DaemonError::invalid(format!("cannot set up TLS for NBD over TCP: {e}")))?;
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| DaemonError::io("cannot install the SIGHUP handler", &e))?;
    let handle = signals.handle();
    let reloading = Arc::clone(&tls);
    let thread = std::thread::Builder::new()
        .name("fss-tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                let dir = reloading.settings().dir.display().to_string();
                match reloading.reload() {
                    Ok(()) => tracing::info!(
                        "TLS certificates reloaded from {dir}: new NBD connections use them"
                    ),
                    Err(e) => tracing::error!(
                        "TLS certificates not reloaded: {e}; the ones loaded before stay in use"
                    ),
                }
            }
        })
        .map_err(|e| DaemonError::io("cannot start the TLS reload thread", &e))?;
    Ok(Some(Reloader {
        tls,
        signals: handle,
        thread: Some(thread),
    }))
}

impl Reloader {
    /// The configuration the NBD server uses.
    #[must_use]
    pub fn tls(&self) -> Arc<fss_nbd::Tls> {
        Arc::clone(&self.tls)
    }

    /// Stop reloading (SIGHUP then does nothing more).
    pub fn stop(&mut self) {
        self.signals.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A warning for a TCP listener reachable from other machines, when its clients are not all
/// authenticated: `None` when it listens on loopback only or requires client certificates.
#[must_use]
pub fn exposure_warning(local: std::net::SocketAddr, tls: Option<&fss_nbd::Tls>) -> Option<String> {
    if local.ip().is_loopback() {
        return None;
    }
    match tls.map(fss_nbd::Tls::settings) {
        None => Some(format!(
            "NBD over TCP on {local} serves every volume read-write, unencrypted and without \
             authentication, to anyone who can reach that address; listen on 127.0.0.1 (or \
             use the unix socket) unless the network is trusted"
        )),
        Some(s) if s.mode == fss_nbd::TlsMode::On => Some(format!(
            "NBD over TCP on {local} also serves plaintext clients (--tls on): every volume, \
             read-write, unencrypted, to anyone who can reach that address; use --tls require"
        )),
        Some(s) if !s.verify_peer => Some(format!(
            "NBD over TCP on {local} is encrypted but serves every volume read-write to anyone \
             who can reach that address: add --tls-verify-peer (and --tls-authz CN=...) to \
             require client certificates"
        )),
        Some(_) => None,
    }
}
