//! `--tls-authz CN=...`: a client certificate verifier that accepts, among the certificates the
//! CA signed, only those whose subject has exactly one common name, equal to one allowed. A
//! refusal fails the TLS handshake with an `access_denied` alert, so the client learns why.

use super::x509;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// `inner`, restricted to the subject common names `allowed` (unrestricted if empty).
pub(super) fn wrap(
    inner: Arc<dyn ClientCertVerifier>,
    allowed: &[String],
) -> Arc<dyn ClientCertVerifier> {
    if allowed.is_empty() {
        return inner;
    }
    Arc::new(Authz {
        inner,
        allowed: allowed.to_vec(),
    })
}

#[derive(Debug)]
struct Authz {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// Whether a certificate's subject names one allowed client; the refusal says why.
fn check(cert: &[u8], allowed: &[String]) -> Result<(), String> {
    let names = x509::subject_common_names(cert)
        .ok_or_else(|| "its subject could not be read".to_string())?;
    match names.as_slice() {
        [cn] if allowed.iter().any(|a| a == cn) => Ok(()),
        [cn] => Err(format!("subject CN={cn} is not among --tls-authz")),
        [] => Err("its subject has no CN".into()),
        _ => Err(format!(
            "its subject has {} CNs ({}); --tls-authz needs exactly one",
            names.len(),
            names.join(", ")
        )),
    }
}

impl ClientCertVerifier for Authz {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Err(why) = check(end_entity, &self.allowed) {
            tracing::warn!(
                "NBD client certificate refused: {why} (allowed: {})",
                self.allowed
                    .iter()
                    .map(|a| format!("CN={a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Err(CertificateError::ApplicationVerificationFailure.into());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
