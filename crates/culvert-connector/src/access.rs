//! `originRequest.access`: checking the `Cf-Access-Jwt-Assertion` header
//! of each request against the Access team's signing keys, as cloudflared
//! does for rules with `access.required: true`.
//!
//! The token must be a JWS signed with one of the keys of the team's key set
//! (RS256, or ES256 for self-hosted issuers), issued by
//! `https://<teamName>.cloudflareaccess.com` (`…fed.cloudflareaccess.com` for
//! `environment: fed`), unexpired, and — when `audTag` is set — carry one of
//! the tags in `aud`. The key set comes from
//! `https://<teamName>.cloudflareaccess.com/cdn-cgi/access/certs` like
//! cloudflared's, or from the culvert extension `access.certsUrl` (any
//! http(s) URL serving a JWKS document), which self-hosted set-ups and
//! offline tests use. Keys are cached and re-fetched when a token names an
//! unknown key (at most once per [`REFRESH_MIN_INTERVAL`]) and after
//! [`KEYS_MAX_AGE`].
//!
//! Token checking ([`verify_token`]) is pure; only key fetching does I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use culvert_ingress::Access;
use culvert_proto::http_meta::HttpRequestHead;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::ConnectorError;

/// The request header carrying the Access token.
pub const ACCESS_JWT_HEADER: &str = "cf-access-jwt-assertion";
/// Re-fetch the key set at most this often when a token names an unknown key.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Cached keys are re-fetched after this long.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Largest key set document accepted.
const JWKS_LIMIT: usize = 1024 * 1024;
/// Largest token accepted.
const TOKEN_LIMIT: usize = 16 * 1024;
/// Allowed clock skew for `nbf` / `iat` in the future.
const NBF_SKEW: u64 = 300;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token was refused or the keys could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("no Cf-Access-Jwt-Assertion header")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    #[error("no signing key {0:?} in the Access key set")]
    UnknownKey(String),
    #[error("invalid signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("issuer {got:?} is not {want:?}")]
    Issuer { got: String, want: String },
    #[error("audience does not match the rule's audTag")]
    Audience,
    #[error("fetching the Access keys from {url}: {detail}")]
    Keys { url: String, detail: String },
}

/// One verification key from a JWKS document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    /// RSA modulus and exponent (big-endian).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// P-256 point, uncompressed (`04 || x || y`).
    P256(Vec<u8>),
}

/// A key set: key id → key (keys without `kid` are stored under "").
pub type KeySet = HashMap<String, Jwk>;

#[derive(Deserialize)]
struct JwksDoc {
    #[serde(default)]
    keys: Vec<JwkDoc>,
}

#[derive(Deserialize)]
struct JwkDoc {
    #[serde(default)]
    kid: String,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
}

/// Parses a JWKS document (`{"keys":[…]}`); keys of other types are skipped.
pub fn parse_jwks(doc: &[u8]) -> Result<KeySet, String> {
    let doc: JwksDoc =
        serde_json::from_slice(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let mut out = KeySet::new();
    for k in doc.keys {
        let key = match k.kty.as_str() {
            "RSA" => match (b64(&k.n), b64(&k.e)) {
                (Ok(n), Ok(e)) if !n.is_empty() && !e.is_empty() => Jwk::Rsa { n, e },
                _ => continue,
            },
            "EC" if k.crv == "P-256" => match (b64(&k.x), b64(&k.y)) {
                (Ok(x), Ok(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut p = vec![4u8];
                    p.extend_from_slice(&x);
                    p.extend_from_slice(&y);
                    Jwk::P256(p)
                }
                _ => continue,
            },
            _ => continue,
        };
        out.insert(k.kid, key);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: String,
    #[serde(default)]
    kid: String,
}

/// `aud` is a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    aud: Option<Aud>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// The key id a token names (to know whether the key set must be refreshed).
pub fn token_key_id(token: &str) -> Result<String, AccessError> {
    let header = token
        .split('.')
        .next()
        .ok_or_else(|| AccessError::Malformed("empty".into()))?;
    let header: Header = decode_part(header)?;
    Ok(header.kid)
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AccessError> {
    let raw = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AccessError::Malformed(format!("base64: {e}")))?;
    serde_json::from_slice(&raw).map_err(|e| AccessError::Malformed(format!("JSON: {e}")))
}

/// Verifies `token` with `keys`: signature, issuer, expiry, audience.
/// `now` is UNIX seconds.
pub fn verify_token(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    aud_tags: &[String],
    now: u64,
) -> Result<(), AccessError> {
    if token.is_empty() {
        return Err(AccessError::Missing);
    }
    if token.len() > TOKEN_LIMIT {
        return Err(AccessError::Malformed("too long".into()));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AccessError::Malformed("not a JWS compact token".into()));
    };
    let header: Header = decode_part(h)?;
    let key = keys
        .get(&header.kid)
        .ok_or_else(|| AccessError::UnknownKey(header.kid.clone()))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| AccessError::Malformed(format!("signature base64: {e}")))?;
    let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
    use ring::signature as sg;
    let ok = match (header.alg.as_str(), key) {
        ("RS256", Jwk::Rsa { n, e }) => sg::RsaPublicKeyComponents { n, e }
            .verify(&sg::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
            .is_ok(),
        ("ES256", Jwk::P256(point)) => {
            sg::UnparsedPublicKey::new(&sg::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, &sig)
                .is_ok()
        }
        ("RS256" | "ES256", _) => false,
        (other, _) => return Err(AccessError::Algorithm(other.to_owned())),
    };
    if !ok {
        return Err(AccessError::Signature);
    }
    let claims: Claims = decode_part(c)?;
    if claims.iss.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(AccessError::Issuer {
            got: claims.iss,
            want: issuer.to_owned(),
        });
    }
    let now = now as f64;
    match claims.exp {
        Some(exp) if exp > now => {}
        _ => return Err(AccessError::Expired),
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + NBF_SKEW as f64) {
        return Err(AccessError::NotYetValid);
    }
    if !aud_tags.is_empty() {
        let auds = match claims.aud {
            Some(Aud::One(a)) => vec![a],
            Some(Aud::Many(v)) => v,
            None => Vec::new(),
        };
        if !auds.iter().any(|a| aud_tags.contains(a)) {
            return Err(AccessError::Audience);
        }
    }
    Ok(())
}

/// The issuer cloudflared expects for a team.
pub fn team_issuer(team: &str, environment: &str) -> String {
    let team = team.trim();
    if environment.eq_ignore_ascii_case("fed") {
        format!("https://{team}.fed.cloudflareaccess.com")
    } else {
        format!("https://{team}.cloudflareaccess.com")
    }
}

/// Where the team's keys are: `access.certsUrl`, else cloudflared's URL.
pub fn certs_url(access: &Access) -> String {
    if access.certs_url.trim().is_empty() {
        format!(
            "{}/cdn-cgi/access/certs",
            team_issuer(&access.team_name, &access.environment)
        )
    } else {
        access.certs_url.trim().to_owned()
    }
}

struct Cache {
    keys: KeySet,
    fetched: Option<Instant>,
}

/// Checks tokens for one rule; shared by all its requests.
pub struct AccessValidator {
    issuer: String,
    aud_tags: Vec<String>,
    certs_url: hyper::Uri,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for AccessValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessValidator")
            .field("issuer", &self.issuer)
            .field("aud_tags", &self.aud_tags)
            .field("certs_url", &self.certs_url.to_string())
            .finish_non_exhaustive()
    }
}

impl AccessValidator {
    /// Refuses a configuration it could not enforce (no team, bad URL).
    pub fn new(access: &Access) -> Result<AccessValidator, ConnectorError> {
        if access.team_name.trim().is_empty() {
            return Err(ConnectorError::Config(
                "originRequest.access: teamName is required to check Access tokens".into(),
            ));
        }
        let url = certs_url(access);
        let uri: hyper::Uri = url
            .parse()
            .ok()
            .filter(|u: &hyper::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| {
                ConnectorError::Config(format!(
                    "originRequest.access.certsUrl {url:?} is not an http(s) URL"
                ))
            })?;
        Ok(AccessValidator {
            issuer: team_issuer(&access.team_name, &access.environment),
            aud_tags: access
                .aud_tag
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect(),
            certs_url: uri,
            cache: Mutex::new(Cache {
                keys: KeySet::new(),
                fetched: None,
            }),
        })
    }

    /// Checks a request's `Cf-Access-Jwt-Assertion` (the first one, as Go's
    /// `Header.Get` in cloudflared).
    pub async fn verify_request(&self, head: &HttpRequestHead) -> Result<(), AccessError> {
        self.verify(head.header(ACCESS_JWT_HEADER).next().unwrap_or(""))
            .await
    }

    /// Checks one request's token.
    pub async fn verify(&self, token: &str) -> Result<(), AccessError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AccessError::Missing);
        }
        let kid = token_key_id(token)?;
        let keys = {
            let mut cache = self.cache.lock().await;
            let stale = cache.fetched.is_none_or(|t| t.elapsed() >= KEYS_MAX_AGE);
            let unknown = !cache.keys.contains_key(&kid)
                && cache
                    .fetched
                    .is_none_or(|t| t.elapsed() >= REFRESH_MIN_INTERVAL);
            if stale || unknown {
                match self.fetch().await {
                    Ok(keys) => {
                        cache.keys = keys;
                        cache.fetched = Some(Instant::now());
                    }
                    Err(e) if cache.keys.is_empty() => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "keeping the cached Access keys"),
                }
            }
            cache.keys.clone()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        verify_token(token, &keys, &self.issuer, &self.aud_tags, now)
    }

    async fn fetch(&self) -> Result<KeySet, AccessError> {
        let err = |detail: String| AccessError::Keys {
            url: self.certs_url.to_string(),
            detail,
        };
        let tls = crate::tls::origin_tls_config(&crate::tls::OriginTrust::System)
            .map_err(|e| err(e.to_string()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let get = async {
            let resp = client
                .get(self.certs_url.clone())
                .await
                .map_err(|e| err(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(err(format!("HTTP {}", resp.status())));
            }
            let body = Limited::new(resp.into_body(), JWKS_LIMIT)
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            parse_jwks(&body).map_err(err)
        };
        tokio::time::timeout(FETCH_TIMEOUT, get)
            .await
            .map_err(|_| err(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    fn es256_key() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let jwk = Jwk::P256(kp.public_key().as_ref().to_vec());
        (kp, jwk)
    }

    fn sign(kp: &EcdsaKeyPair, kid: &str, claims: serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#));
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let msg = format!("{h}.{c}");
        let sig = kp.sign(&SystemRandom::new(), msg.as_bytes()).unwrap();
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn verifies_like_cloudflared() {
        let (kp, jwk) = es256_key();
        let keys = KeySet::from([("k1".to_string(), jwk)]);
        let iss = team_issuer("team", "");
        assert_eq!(iss, "https://team.cloudflareaccess.com");
        let aud = vec!["AUD1".to_string()];
        let good = serde_json::json!({"iss": iss, "aud": ["AUD1"], "exp": 2000, "nbf": 900});
        let t = sign(&kp, "k1", good.clone());
        assert_eq!(verify_token(&t, &keys, &iss, &aud, 1000), Ok(()));
        assert_eq!(token_key_id(&t).unwrap(), "k1");
        assert_eq!(
            verify_token(&t, &keys, &iss, &aud, 2000),
            Err(AccessError::Expired)
        );
        let other = vec!["AUD2".to_string()];
        assert_eq!(
            verify_token(&t, &keys, &iss, &other, 1000),
            Err(AccessError::Audience)
        );
        assert!(matches!(
            verify_token(&t, &keys, "https://x.cloudflareaccess.com", &aud, 1000),
            Err(AccessError::Issuer { .. })
        ));
        let t2 = sign(&kp, "k2", good.clone());
        assert_eq!(
            verify_token(&t2, &keys, &iss, &aud, 1000),
            Err(AccessError::UnknownKey("k2".into()))
        );
        // A key from another pair does not verify.
        let (kp2, _) = es256_key();
        let forged = sign(&kp2, "k1", good);
        assert_eq!(
            verify_token(&forged, &keys, &iss, &aud, 1000),
            Err(AccessError::Signature)
        );
        // aud as a single string.
        let t3 = sign(
            &kp,
            "k1",
            serde_json::json!({"iss": iss, "aud": "AUD1", "exp": 2000}),
        );
        assert_eq!(verify_token(&t3, &keys, &iss, &aud, 1000), Ok(()));
        assert_eq!(
            verify_token("", &keys, &iss, &aud, 1000),
            Err(AccessError::Missing)
        );
        assert!(matches!(
            verify_token("a.b", &keys, &iss, &aud, 1000),
            Err(AccessError::Malformed(_))
        ));
    }

    #[test]
    fn urls() {
        let mut a = Access {
            required: true,
            team_name: "myteam".into(),
            ..Access::default()
        };
        assert_eq!(
            certs_url(&a),
            "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        a.environment = "fed".into();
        assert_eq!(
            certs_url(&a),
            "https://myteam.fed.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        a.certs_url = "http://127.0.0.1:9/certs".into();
        assert_eq!(certs_url(&a), "http://127.0.0.1:9/certs");
        a.certs_url = "ftp://x".into();
        assert!(AccessValidator::new(&a).is_err());
        a.team_name.clear();
        a.certs_url.clear();
        assert!(AccessValidator::new(&a).is_err());
    }

    #[test]
    fn jwks_parsing() {
        let doc = br#"{"keys":[{"kid":"r","kty":"RSA","alg":"RS256","n":"AQAB","e":"AQAB"},
            {"kid":"x","kty":"oct","k":"abc"},{"kid":"bad","kty":"EC","crv":"P-256","x":"AA","y":"AA"}],
            "public_cert":{"kid":"r"}}"#;
        let ks = parse_jwks(doc).unwrap();
        assert_eq!(ks.len(), 1);
        assert!(matches!(ks.get("r"), Some(Jwk::Rsa { .. })));
        assert!(parse_jwks(b"\"x\"").is_err());
        assert!(parse_jwks(b"{").is_err());
    }

    proptest::proptest! {
        #[test]
        fn verify_is_total(s in ".{0,200}") {
            let _ = verify_token(&s, &KeySet::new(), "i", &[], 0);
            let _ = token_key_id(&s);
        }
    }
}
