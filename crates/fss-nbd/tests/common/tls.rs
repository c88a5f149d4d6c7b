//! TLS test helpers: certificates made by openssl (`tests/make-certs.sh`), a server on
//! 127.0.0.1 with TLS, and a rustls client for raw protocol tests.

use super::Harness;
use fss_nbd::{ServerOptions, Tls, TlsMode, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Certificates in a temporary directory: `server/`, `alice/`, `bob/`, `anon/`, `other/`,
/// `v1/` (see `make-certs.sh`).
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        super::require("openssl", "openssl");
        let dir = tempfile::Builder::new()
            .prefix("fss-nbd-certs-")
            .tempdir()
            .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make-certs.sh");
        super::run_ok(Command::new("sh").arg(&script).arg(dir.path()));
        Certs { dir }
    }

    /// One of the directories (`server`, `alice`, ...).
    pub fn path(&self, which: &str) -> PathBuf {
        self.dir.path().join(which)
    }

    /// Settings for a server on `server/`.
    pub fn settings(&self, mode: TlsMode, verify_peer: bool, authz: &[&str]) -> TlsSettings {
        TlsSettings {
            dir: self.path("server"),
            mode,
            verify_peer,
            authz: authz.iter().map(|s| (*s).to_string()).collect(),
        }
    }
}

/// A server with the volume `default` on a unix socket and on 127.0.0.1 with TLS.
pub struct TlsHarness {
    pub h: Harness,
    pub certs: Certs,
    pub tls: Arc<Tls>,
    pub port: u16,
}

impl TlsHarness {
    pub fn new(size: u64, mode: TlsMode, verify_peer: bool, authz: &[&str]) -> Self {
        Self::with_options(size, mode, verify_peer, authz, ServerOptions::default())
    }

    pub fn with_options(
        size: u64,
        mode: TlsMode,
        verify_peer: bool,
        authz: &[&str],
        options: ServerOptions,
    ) -> Self {
        let certs = Certs::new();
        let tls = Tls::load(certs.settings(mode, verify_peer, authz)).unwrap();
        let h = Harness::with_options(
            size,
            ServerOptions {
                tls: Some(Arc::clone(&tls)),
                ..options
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = h.server.clone();
        std::thread::spawn(move || s.serve_tcp(listener));
        TlsHarness {
            h,
            certs,
            tls,
            port,
        }
    }

    /// An `nbds://` URI for libnbd with the client directory `client` (`alice`, `anon`, ...).
    pub fn uri(&self, export: &str, client: &str) -> String {
        format!(
            "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
            self.port,
            self.certs.path(client).display()
        )
    }

    /// The same export without TLS.
    pub fn plain_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// qemu's `--object` for the client directory `client`, with id `tls0`.
    pub fn qemu_object(&self, client: &str) -> String {
        format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            self.certs.path(client).display()
        )
    }

    /// qemu's `--image-opts` for an export over TLS (with the object above).
    pub fn qemu_image(&self, export: &str) -> String {
        format!(
            "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
            self.port
        )
    }

    pub fn tcp(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }
}

/// A rustls client configuration trusting the test CA, with the client certificate of
/// `client` when it has one.
pub fn client_config(certs: &Certs, client: &str) -> Arc<ClientConfig> {
    let dir = certs.path(client);
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca-cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cert = dir.join("client-cert.pem");
    let config = if cert.exists() {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    Arc::new(config)
}

/// A TLS client stream over `tcp` (the handshake runs on first use).
pub fn tls_client(
    certs: &Certs,
    client: &str,
    tcp: TcpStream,
) -> StreamOwned<ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client_config(certs, client), name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
