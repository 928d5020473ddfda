//! TLS and QUIC client settings, rustls with the ring provider only.
//!
//! - Edge: TLS 1.3, ALPN `argotunnel`, server name `quic.cftunnel.com`,
//!   key exchange groups of ring's default provider (X25519, secp256r1,
//!   secp384r1 — secp256r1 is what the edge may insist on), trust = the
//!   `--cacert` PEM when given (it *replaces* the pool, as in cloudflared),
//!   else the system roots. QUIC transport values follow cloudflared
//!   (edge-protocol.md §1.6): 5 s idle timeout, 1 s keep-alive.
//! - Origins: system roots or a rule's `caPool`, or no verification with
//!   `noTLSVerify`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::ConnectorError;

/// SNI and verified name of the QUIC edge.
pub const EDGE_QUIC_SERVER_NAME: &str = "quic.cftunnel.com";
/// ALPN offered to the edge.
pub const EDGE_ALPN: &[u8] = b"argotunnel";

/// The only crypto provider we use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate of a PEM bundle. An empty bundle is an error.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConnectorError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectorError::Config(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ConnectorError::Config(
            "no certificate found in the PEM data".into(),
        ));
    }
    Ok(certs)
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, ConnectorError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_pem_certs(pem)? {
        roots
            .add(cert)
            .map_err(|e| ConnectorError::Config(format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The system trust store, loaded once (missing or unreadable system
/// certificates give an empty store: verification then fails clearly).
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::debug!(error = %e, "loading system CA certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            tracing::debug!(added, ignored, "system CA certificates");
            Arc::new(roots)
        })
        .clone()
}

/// rustls client config for the edge.
pub fn edge_tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ConnectorError> {
    let roots = match ca_pem {
        Some(pem) => roots_from_pem(pem)?,
        None => (*system_roots()).clone(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectorError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![EDGE_ALPN.to_vec()];
    Ok(cfg)
}

/// UDP socket buffer size asked for on the QUIC socket (quic-go's 7 MiB;
/// the kernel caps it at `net.core.{r,w}mem_max`).
pub const UDP_SOCKET_BUFFER: usize = 7 << 20;

/// QUIC transport limits. Bounded: the connection-level receive window caps
/// what the edge can make us buffer across all streams of one connection.
pub fn edge_transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // cloudflared: MaxIdleTimeout 5 s, KeepAlivePeriod 1 s.
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(5)) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // The edge opens one bidi stream per request; we open only the control
    // stream and never uni streams.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(10_000));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // HEAD cloudflared: 30 MiB per connection, 6 MiB per stream.
    t.receive_window(quinn::VarInt::from_u32(30 * 1024 * 1024));
    t.stream_receive_window(quinn::VarInt::from_u32(6 * 1024 * 1024));
    t.send_window(30 * 1024 * 1024);
    // Responses flow from us to the edge: asking a peer that supports the
    // ACK-frequency extension (our edge) to acknowledge every 10th packet
    // rather than every 2nd saves both ends most ACK processing. Peers
    // without the extension are unaffected.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(9));
    t.ack_frequency_config(Some(acks));
    t
}

/// quinn client config for the edge.
pub fn edge_quic_config(ca_pem: Option<&[u8]>) -> Result<quinn::ClientConfig, ConnectorError> {
    let tls = edge_tls_config(ca_pem)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnectorError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(edge_transport_config()));
    Ok(cfg)
}

/// How an HTTPS origin's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginTrust {
    /// The system roots.
    System,
    /// The PEM file of `originRequest.caPool`, in addition to the system
    /// roots (as cloudflared does).
    CaPool(String),
    /// `noTLSVerify`: accept any certificate.
    NoVerify,
}

/// rustls client config for HTTPS origins (TLS 1.2 and 1.3; ALPN is set by
/// the HTTP connector).
pub fn origin_tls_config(trust: &OriginTrust) -> Result<rustls::ClientConfig, ConnectorError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::Tls(e.to_string()))?;
    let cfg = match trust {
        OriginTrust::System => builder
            .with_root_certificates(system_roots())
            .with_no_client_auth(),
        OriginTrust::CaPool(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ConnectorError::Config(format!("reading originRequest.caPool {path}: {e}"))
            })?;
            let mut roots = (*system_roots()).clone();
            for cert in parse_pem_certs(&pem)? {
                roots.add(cert).map_err(|e| {
                    ConnectorError::Config(format!("unusable certificate in {path}: {e}"))
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        OriginTrust::NoVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
    };
    Ok(cfg)
}

/// Accepts any origin certificate (`noTLSVerify`); signatures are still
/// checked so the handshake stays well-formed.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_config_shape() {
        let cfg = edge_tls_config(None).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"argotunnel".to_vec()]);
        assert!(
            cfg.crypto_provider()
                .kx_groups
                .iter()
                .any(|g| g.name() == rustls::NamedGroup::secp256r1)
        );
        assert!(edge_quic_config(None).is_ok());
        assert!(matches!(
            edge_tls_config(Some(b"not pem")),
            Err(ConnectorError::Config(_))
        ));
    }

    #[test]
    fn origin_configs() {
        assert!(origin_tls_config(&OriginTrust::System).is_ok());
        assert!(origin_tls_config(&OriginTrust::NoVerify).is_ok());
        assert!(origin_tls_config(&OriginTrust::CaPool("/nonexistent/ca.pem".into())).is_err());
    }
}
