//! The edge's TLS identity: a certificate for `quic.cftunnel.com`,
//! `h2.cftunnel.com` and `probe.cftunnel.com` (the names cloudflared
//! verifies), and the rustls server configuration for QUIC.
//!
//! Either the operator supplies a PEM chain and key, or the edge keeps its
//! own CA in the data directory: created on first start, reused afterwards,
//! private keys mode 0600. Connectors trust that CA (`--cacert` /
//! `SSL_CERT_FILE`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::EdgeError;

/// The names cloudflared puts in SNI and verifies (edge-protocol.md §1.3).
pub const EDGE_NAMES: [&str; 3] = ["quic.cftunnel.com", "h2.cftunnel.com", "probe.cftunnel.com"];
/// QUIC ALPN cloudflared offers.
pub const ALPN_ARGOTUNNEL: &[u8] = b"argotunnel";

const CA_CERT_FILE: &str = "edge-ca.pem";
const CA_KEY_FILE: &str = "edge-ca-key.pem";
const LEAF_CERT_FILE: &str = "edge-cert.pem";
const LEAF_KEY_FILE: &str = "edge-key.pem";
/// Certificate files are small; a bound keeps a wrong path from costing memory.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The loaded identity.
pub(crate) struct EdgeTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the CA that connectors must trust.
    pub ca_pem: String,
}

impl EdgeTls {
    /// Loads the operator's files when both are given, else the edge's own CA
    /// from `data_dir` (creating it on first start).
    pub fn load(
        data_dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<EdgeTls, EdgeError> {
        match (cert, key) {
            (Some(c), Some(k)) => Self::from_operator_files(c, k),
            (None, None) => Self::own_ca(data_dir),
            _ => Err(EdgeError::Config(
                "edge_cert and edge_key must be given together".into(),
            )),
        }
    }

    fn from_operator_files(cert: &Path, key: &Path) -> Result<EdgeTls, EdgeError> {
        let cert_pem = read_small(cert)?;
        let key_pem = read_small(key)?;
        let chain = parse_chain(&cert_pem, cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| EdgeError::tls(key.display().to_string(), e))?;
        // The issuer connectors should trust: the last certificate of the
        // chain (the leaf itself when it is alone, e.g. self-signed).
        let ca_pem = chain.last().map(|c| der_to_pem(c)).unwrap_or_default();
        Ok(EdgeTls { chain, key, ca_pem })
    }

    fn own_ca(dir: &Path) -> Result<EdgeTls, EdgeError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let leaf_cert_path = dir.join(LEAF_CERT_FILE);
        let leaf_key_path = dir.join(LEAF_KEY_FILE);

        let (ca_pem, ca_key, ca_is_new) = if ca_cert_path.exists() && ca_key_path.exists() {
            let pem = String::from_utf8(read_small(&ca_cert_path)?)
                .map_err(|e| EdgeError::tls(CA_CERT_FILE, e))?;
            let key = KeyPair::from_pem(&String::from_utf8_lossy(&read_small(&ca_key_path)?))
                .map_err(|e| EdgeError::tls(CA_KEY_FILE, e))?;
            (pem, key, false)
        } else {
            let key = KeyPair::generate().map_err(|e| EdgeError::tls("CA key", e))?;
            let key_pem = key.serialize_pem();
            let pem = CertifiedIssuer::self_signed(ca_params(), key)
                .map_err(|e| EdgeError::tls("CA certificate", e))?
                .pem();
            let key = KeyPair::from_pem(&key_pem).map_err(|e| EdgeError::tls("CA key", e))?;
            write_file(&ca_key_path, key_pem.as_bytes(), 0o600)?;
            write_file(&ca_cert_path, pem.as_bytes(), 0o644)?;
            (pem, key, true)
        };

        if ca_is_new || !leaf_cert_path.exists() || !leaf_key_path.exists() {
            // Same subject and key as the stored CA, so the leaf chains to it.
            let issuer = Issuer::new(ca_params(), ca_key);
            let leaf_key = KeyPair::generate().map_err(|e| EdgeError::tls("edge key", e))?;
            let leaf = leaf_params()?
                .signed_by(&leaf_key, &issuer)
                .map_err(|e| EdgeError::tls("edge certificate", e))?;
            write_file(&leaf_key_path, leaf_key.serialize_pem().as_bytes(), 0o600)?;
            let mut chain_pem = leaf.pem();
            chain_pem.push_str(&ca_pem);
            write_file(&leaf_cert_path, chain_pem.as_bytes(), 0o644)?;
        }

        let chain = parse_chain(&read_small(&leaf_cert_path)?, &leaf_cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read_small(&leaf_key_path)?)
            .map_err(|e| EdgeError::tls(LEAF_KEY_FILE, e))?;
        Ok(EdgeTls { chain, key, ca_pem })
    }

    /// rustls configuration for the QUIC listener: TLS 1.3 only, ring
    /// provider (its default groups include secp256r1, the only group
    /// cloudflared 2023.x offers), ALPN `argotunnel`.
    pub fn quic_server_config(&self) -> Result<rustls::ServerConfig, EdgeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| EdgeError::tls("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| EdgeError::tls("edge certificate and key", e))?;
        cfg.alpn_protocols = vec![ALPN_ARGOTUNNEL.to_vec()];
        Ok(cfg)
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "culvert");
    dn.push(DnType::CommonName, "culvert edge CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn leaf_params() -> Result<CertificateParams, EdgeError> {
    let names: Vec<String> = EDGE_NAMES.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(names).map_err(|e| EdgeError::tls("edge names", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, EDGE_NAMES[0]);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(p)
}

fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, EdgeError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EdgeError::tls(path.display().to_string(), e))?;
    if chain.is_empty() {
        return Err(EdgeError::tls(
            path.display().to_string(),
            "no CERTIFICATE block",
        ));
    }
    Ok(chain)
}

/// PEM text of one DER certificate (64-column base64, as openssl writes it).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn io_err(path: &Path, source: std::io::Error) -> EdgeError {
    EdgeError::Io {
        path: PathBuf::from(path),
        source,
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, EdgeError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(EdgeError::tls(
            path.display().to_string(),
            format!("file is {} bytes, limit {MAX_PEM_FILE}", meta.len()),
        ));
    }
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Writes via a temporary file created with `mode`, so a private key is
/// never readable by others, not even briefly.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), EdgeError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(contents).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = EdgeTls::load(dir.path(), None, None).unwrap();
        assert_eq!(a.chain.len(), 2);
        for (f, mode) in [
            (CA_KEY_FILE, 0o600),
            (LEAF_KEY_FILE, 0o600),
            (CA_CERT_FILE, 0o644),
        ] {
            let m = std::fs::metadata(dir.path().join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{f}");
        }
        let b = EdgeTls::load(dir.path(), None, None).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.chain, b.chain);
        assert!(a.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let cfg = a.quic_server_config().unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"argotunnel".to_vec()]);
        assert!(
            cfg.crypto_provider()
                .kx_groups
                .iter()
                .any(|g| g.name() == rustls::NamedGroup::secp256r1),
            "cloudflared 2023.x offers only P-256"
        );
    }

    #[test]
    fn operator_files_and_half_config() {
        let dir = tempfile::tempdir().unwrap();
        let own = EdgeTls::load(&dir.path().join("own"), None, None).unwrap();
        let cert = dir.path().join("own").join(LEAF_CERT_FILE);
        let key = dir.path().join("own").join(LEAF_KEY_FILE);
        let op = EdgeTls::load(dir.path(), Some(&cert), Some(&key)).unwrap();
        assert_eq!(op.ca_pem, own.ca_pem, "issuer = last cert of the chain");
        assert!(matches!(
            EdgeTls::load(dir.path(), Some(&cert), None),
            Err(EdgeError::Config(_))
        ));
        assert!(EdgeTls::load(dir.path(), Some(&key), Some(&key)).is_err());
    }
}
