//! The rustls client configuration Anvil's outbound HTTPS clients share: the
//! Redfish driver (BMCs) and the NetBox sync. One place for the trust rules.
//!
//! Built here rather than by reqwest so that the crypto provider is always
//! ring, whatever else the process links or installs (reqwest's
//! `rustls-no-provider` would otherwise panic without a process default).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The pinned CA is unusable (operator's configuration).
    #[error("the pinned CA is unusable: {0}")]
    BadCa(String),
    /// The system trust store could not be loaded.
    #[error("cannot set up certificate verification: {0}")]
    Verifier(String),
}

/// `verify`: check the server's certificate and name. `ca_pem`: trust only these
/// CAs instead of the system roots.
pub fn client_config(verify: bool, ca_pem: Option<&str>) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let mut config = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else if let Some(pem) = ca_pem {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| TlsSetupError::BadCa(format!("unreadable PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TlsSetupError::BadCa(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::BadCa(
                "the pinned CA PEM holds no certificate".into(),
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    // reqwest is built without HTTP/2 here, and BMC web servers (the
    // pickiest peers) are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `verify_tls = false` (an operator's explicit opt-out): any certificate
/// and name are accepted (BMCs ship
/// self-signed certificates for their IP address), but the handshake
/// signatures are still checked so the session keys belong to whoever holds
/// the presented certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Is this (a source of) a transport error a TLS failure? Returns rustls'
/// description. `io::Error::source` skips the wrapped error itself, so
/// wrapped errors are unpacked by hand.
pub fn find_tls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            },
            None => e.source(),
        };
    }
    None
}
