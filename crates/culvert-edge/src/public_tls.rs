//! The public HTTPS listener (`--https-listen`): eyeball HTTPS and `wss://`
//! for the management host, so that `cloudflared tail` (which only speaks
//! `wss://`) works with `SSL_CERT_FILE` pointing at the operator's CA.
//!
//! The certificate comes from operator files and is reloaded when they
//! change (checked every [`RELOAD_INTERVAL`]); a bad new pair is refused
//! and the previous one kept, so a half-written renewal cannot take the
//! listener down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::error::EdgeError;
use crate::{HttpsOptions, Shared};

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on a TLS handshake from an eyeball.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Certificate and key files are small; refuse anything else.
const MAX_PEM: u64 = 1024 * 1024;

fn read_pem(path: &Path) -> Result<Vec<u8>, EdgeError> {
    let meta = std::fs::metadata(path).map_err(|source| EdgeError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > MAX_PEM {
        return Err(EdgeError::tls("public certificate", "file too large"));
    }
    std::fs::read(path).map_err(|source| EdgeError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads a certificate chain and its key into a rustls `CertifiedKey`.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, EdgeError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read_pem(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| EdgeError::tls("public certificate", e))?;
    if chain.is_empty() {
        return Err(EdgeError::tls(
            "public certificate",
            format!("no certificate in {}", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_pem(key)?)
        .map_err(|e| EdgeError::tls("public key", e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| EdgeError::tls("public key", e))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| EdgeError::tls("public certificate and key", e))?;
    Ok(ck)
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, EdgeError> {
        Ok(ReloadingCert {
            current: ArcSwap::from_pointee(load_certified_key(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reloads now; on error the current certificate stays.
    pub fn reload(&self) -> Result<(), EdgeError> {
        let ck = load_certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// Polls the files' modification times until `stop`.
    async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut seen = mtimes(&self.cert, &self.key);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            let now = mtimes(&self.cert, &self.key);
            if now.is_none() || now == seen {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    seen = now;
                    tracing::info!(cert = %self.cert.display(), "reloaded the public TLS certificate");
                }
                // Maybe half-written: try again at the next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "new public TLS certificate refused; keeping the previous one")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Binds the HTTPS listener and loads the certificate.
pub(crate) async fn bind(
    opts: &HttpsOptions,
) -> Result<(TcpListener, SocketAddr, Arc<ReloadingCert>), EdgeError> {
    let certs = Arc::new(ReloadingCert::load(&opts.cert, &opts.key)?);
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| EdgeError::Bind {
            what: "HTTPS",
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| EdgeError::Bind {
        what: "HTTPS",
        addr: opts.listen,
        source,
    })?;
    Ok((listener, addr, certs))
}

/// Accepts TLS eyeball connections until shutdown; each is served like a
/// plain HTTP one.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, certs: Arc<ReloadingCert>) {
    tokio::spawn(certs.clone().watch(shared.shutdown.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(certs),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the public TLS configuration");
            return;
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let limits = crate::accept::TlsLimits {
        what: "HTTPS",
        max_connections: shared.tuning.max_http_connections,
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    let shutdown = shared.shutdown.clone();
    crate::accept::accept_tls(
        shutdown,
        listener,
        acceptor,
        limits,
        move |tls, peer, permit| {
            let scheme = crate::proxy::EyeballScheme::Https;
            crate::proxy::serve_connection(shared.clone(), tls, peer, scheme, permit)
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_pair_on_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a.example");
        let r = ReloadingCert::load(&c, &k).unwrap();
        let first = r.current.load_full().cert[0].clone();
        write_pair(dir.path(), "b.example");
        r.reload().unwrap();
        let second = r.current.load_full().cert[0].clone();
        assert_ne!(first, second);
        std::fs::write(&c, "garbage").unwrap();
        assert!(r.reload().is_err());
        assert_eq!(r.current.load_full().cert[0], second);
        // A key that does not match the certificate is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        write_pair(dir.path(), "c.example");
        std::fs::write(&k, other.serialize_pem()).unwrap();
        assert!(load_certified_key(&c, &k).is_err());
        assert!(load_certified_key(&dir.path().join("none"), &k).is_err());
    }
}
