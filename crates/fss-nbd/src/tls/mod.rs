//! TLS for NBD over TCP (`NBD_OPT_STARTTLS`): certificates in the directory layout qemu and
//! nbdkit use, client certificates and authorization by subject CN, reload on demand, and the
//! stream a connection continues on once upgraded ([`stream`]).
//!
//! One crypto provider, rustls' `ring`, is installed explicitly for the server configuration
//! and the client certificate verifier (`ServerConfig::builder()` panics when two providers are
//! compiled in and none is chosen).

mod authz;
pub(crate) mod stream;
pub(crate) mod x509;

use crate::error::ConnError;
use crate::handshake::TlsOffer;
use crate::stream::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// The CA that signs client certificates, in the certificate directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate (chain), in the certificate directory.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key, in the certificate directory.
pub const SERVER_KEY: &str = "server-key.pem";

/// Whether TLS is offered or required on TCP (the unix socket is always plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Offered: a client may upgrade with `NBD_OPT_STARTTLS` or stay in plaintext.
    On,
    /// Required (the protocol's FORCEDTLS): every option but `STARTTLS` and `ABORT` is
    /// answered `NBD_REP_ERR_TLS_REQD` until the client upgrades.
    Require,
}

/// What `fss serve --tls-*` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The directory with `ca-cert.pem`, `server-cert.pem` and `server-key.pem`.
    pub dir: PathBuf,
    /// Offered or required.
    pub mode: TlsMode,
    /// Require a client certificate signed by `ca-cert.pem`.
    pub verify_peer: bool,
    /// If not empty, the only client certificate subject common names accepted.
    pub authz: Vec<String>,
}

/// Why TLS could not be set up from the certificate directory.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(
        "cannot read {path}: {source}; the TLS certificate directory needs {CA_CERT} (with \
         --tls-verify-peer), {SERVER_CERT} and {SERVER_KEY}, the layout qemu and nbdkit use"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file held nothing usable.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// A certificate is not X.509 v3.
    #[error(
        "{path}: certificate {index} is X.509 version {version}, and rustls accepts only \
         version 3: make it again with extensions (for example `openssl x509 -req ... \
         -extfile FILE` with basicConstraints and keyUsage lines, or `openssl req -x509`)"
    )]
    NotV3 {
        /// The file.
        path: PathBuf,
        /// Which certificate of the file (1 is the first).
        index: usize,
        /// Its version.
        version: u8,
    },
    /// The settings contradict each other.
    #[error("{0}")]
    Settings(String),
    /// rustls refused the configuration.
    #[error("the TLS configuration from {dir} was refused: {source}")]
    Rustls {
        /// The certificate directory.
        dir: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// TLS as the server uses it: the settings, and the configuration built from the files, which
/// [`Tls::reload`] replaces for new connections.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Read the certificate directory and build the configuration.
    ///
    /// # Errors
    /// A file is missing or unusable, a certificate is not v3, `authz` without `verify_peer`,
    /// or rustls refuses the key or the CA.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let config = build(&settings)?;
        Ok(Arc::new(Tls {
            settings,
            config: RwLock::new(config),
        }))
    }

    /// Read the certificate directory again; new connections use what it holds now. On an
    /// error the configuration in use stays.
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build(&self.settings)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The settings it was loaded with.
    #[must_use]
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether plaintext clients are refused.
    #[must_use]
    pub fn required(&self) -> bool {
        self.settings.mode == TlsMode::Require
    }

    /// The configuration for a new connection.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What a new connection on `stream` is offered.
pub(crate) fn offer(stream: &Stream, tls: Option<&Tls>) -> TlsOffer {
    match (stream, tls) {
        (Stream::Unix(_), _) => TlsOffer::Refused(
            "TLS is not offered on the unix socket (it is local and mode 0600): connect \
             without TLS",
        ),
        (_, None) => TlsOffer::Refused(
            "TLS is off on this server (fss serve --tls off): connect without TLS, or ask for \
             the server to be started with --tls-certificates",
        ),
        (_, Some(t)) if t.required() => TlsOffer::Required,
        (_, Some(_)) => TlsOffer::Optional,
    }
}

/// After `NBD_OPT_STARTTLS` was acknowledged on the plaintext stream `rd` reads: the TLS
/// handshake, and the stream negotiation goes on with.
///
/// # Errors
/// The client sent more before the acknowledgement (those bytes must not pass for
/// encrypted ones), or the handshake failed.
pub(crate) fn upgrade(rd: &BufReader<Stream>, tls: &Tls) -> Result<Stream, ConnError> {
    if !rd.buffer().is_empty() {
        return Err(ConnError::DataAfterStartTls);
    }
    let Stream::Tcp(tcp) = rd.get_ref() else {
        return Err(ConnError::Io(std::io::Error::other(
            "TLS upgrade asked on a stream that is not plain TCP",
        )));
    };
    let stream = stream::accept(tcp.try_clone()?, tls.current())?;
    Ok(Stream::Tls(stream))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, each checked to be X.509 v3.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let content = |what: String| TlsError::Content {
        path: path.to_path_buf(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(content(
            "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        match x509::version(c) {
            Some(3) => {}
            Some(version) => {
                return Err(TlsError::NotV3 {
                    path: path.to_path_buf(),
                    index: i + 1,
                    version,
                })
            }
            None => return Err(content(format!("certificate {} is not valid DER", i + 1))),
        }
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Content {
        path: path.to_path_buf(),
        what: format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected: {e})"),
    })
}

fn build(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    if !s.authz.is_empty() && !s.verify_peer {
        return Err(TlsError::Settings(
            "--tls-authz needs --tls-verify-peer: without a verified client certificate there \
             is no subject to check"
                .into(),
        ));
    }
    let rustls_error = |source| TlsError::Rustls {
        dir: s.dir.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ClientCertVerifier> = if s.verify_peer {
        let path = s.dir.join(CA_CERT);
        let mut roots = RootCertStore::empty();
        for c in certificates(&path)? {
            roots.add(c).map_err(|e| TlsError::Content {
                path: path.clone(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| TlsError::Content {
                path: path.clone(),
                what: format!("cannot verify client certificates with it: {e}"),
            })?;
        authz::wrap(webpki, &s.authz)
    } else {
        WebPkiClientVerifier::no_client_auth()
    };
    let chain = certificates(&s.dir.join(SERVER_CERT))?;
    let key = private_key(&s.dir.join(SERVER_KEY))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Content {
            path: s.dir.join(SERVER_KEY),
            what: format!("does not go with {SERVER_CERT}, or is not supported: {e}"),
        })?;
    Ok(Arc::new(config))
}

/// Parse `--tls-authz CN=NAME` into `NAME`.
///
/// # Errors
/// Anything but `CN=` followed by a name.
pub fn parse_authz(s: &str) -> Result<String, String> {
    match s.strip_prefix("CN=") {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(format!(
            "--tls-authz takes CN=NAME (the client certificate's subject common name), not '{s}'"
        )),
    }
}
