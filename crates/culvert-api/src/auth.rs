//! Credentials and permission groups (spec §1.4, §1.5).
//!
//! Bearer API tokens and legacy global keys are stored as SHA-256 hashes; a
//! presented secret is hashed and looked up, and the stored hash is compared
//! again in constant time before it is trusted.

use axum::http::{HeaderMap, StatusCode};
use culvert_store::{ApiToken, CredentialKind, Micros, Store, now_micros};
use ring::digest;

use crate::envelope::{ApiError, ErrorItem, code};

/// Every permission group culvert knows, as Cloudflare names them.
pub const PERMISSION_GROUPS: &[&str] = &[
    TUNNEL_READ,
    TUNNEL_WRITE,
    CLOUDFLARED_READ,
    CLOUDFLARED_WRITE,
    CONNECTORS_READ,
    CONNECTORS_WRITE,
    WARP_READ,
    WARP_WRITE,
];

pub const TUNNEL_READ: &str = "Cloudflare Tunnel Read";
pub const TUNNEL_WRITE: &str = "Cloudflare Tunnel Write";
pub const CLOUDFLARED_READ: &str = "Cloudflare One Connector: cloudflared Read";
pub const CLOUDFLARED_WRITE: &str = "Cloudflare One Connector: cloudflared Write";
pub const CONNECTORS_READ: &str = "Cloudflare One Connectors Read";
pub const CONNECTORS_WRITE: &str = "Cloudflare One Connectors Write";
pub const WARP_READ: &str = "Cloudflare One Connector: WARP Read";
pub const WARP_WRITE: &str = "Cloudflare One Connector: WARP Write";

/// What an operation requires of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential at all (OpenAPI document).
    Public,
    /// Any valid credential (token verification answers for itself).
    AnyCredential,
    /// A credential of the path's account holding one of these groups.
    Groups(&'static [&'static str]),
}

pub const TUNNEL_READ_GROUPS: &[&str] = &[
    CONNECTORS_READ,
    CONNECTORS_WRITE,
    CLOUDFLARED_READ,
    CLOUDFLARED_WRITE,
    TUNNEL_READ,
    TUNNEL_WRITE,
];
pub const TUNNEL_WRITE_GROUPS: &[&str] = &[CONNECTORS_WRITE, CLOUDFLARED_WRITE, TUNNEL_WRITE];
pub const WARP_READ_GROUPS: &[&str] = &[CONNECTORS_READ, CONNECTORS_WRITE, WARP_READ, WARP_WRITE];
pub const WARP_WRITE_GROUPS: &[&str] = &[CONNECTORS_WRITE, WARP_WRITE];

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token: ApiToken,
}

impl Principal {
    pub fn has_any(&self, groups: &[&str]) -> bool {
        self.token
            .permissions
            .iter()
            .any(|p| groups.contains(&p.as_str()))
    }

    /// The `actor.id` of management tokens: the email of a global key, else
    /// the token id.
    pub fn actor_id(&self) -> &str {
        self.token.email.as_deref().unwrap_or(&self.token.id)
    }
}

/// SHA-256 of a presented secret.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh 40-character API token (the length and alphabet of Cloudflare's),
/// drawn from the OS RNG.
pub fn generate_token_secret() -> Result<String, ring::error::Unspecified> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut bytes = [0u8; 40];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    // 64 symbols: each byte's low 6 bits pick one without bias.
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(b & 63) as usize] as char)
        .collect())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c == '_'
        || c == '-'
        || c == '.'
        || c == '~'
        || c == '+'
        || c == '/'
        || c == '='
}

/// How the request presented its credential, before any lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Bearer(&'a str),
    GlobalKey { email: &'a str, key: &'a str },
}

fn malformed_auth_header() -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        errors: vec![ErrorItem {
            code: code::BAD_HEADERS,
            message: "Invalid request headers".into(),
            error_chain: vec![ErrorItem::new(
                code::BAD_AUTH_HEADER_FORMAT,
                "Invalid format for Authorization header",
            )],
        }],
    }
}

/// Reads the credential headers. Global key headers take precedence, as in
/// the Python SDK when both are configured.
pub fn presented(headers: &HeaderMap) -> Result<Presented<'_>, ApiError> {
    let email = headers.get("x-auth-email");
    let key = headers.get("x-auth-key");
    if let (Some(email), Some(key)) = (email, key) {
        let (Ok(email), Ok(key)) = (email.to_str(), key.to_str()) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code::BAD_HEADERS,
                "Invalid request headers",
            ));
        };
        return Ok(Presented::GlobalKey {
            email: email.trim(),
            key: key.trim(),
        });
    }
    match headers.get(axum::http::header::AUTHORIZATION) {
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::MISSING_AUTH,
            "Missing X-Auth-Key, X-Auth-Email or Authorization headers",
        )),
        Some(value) => {
            let value = value.to_str().map_err(|_| malformed_auth_header())?;
            let (scheme, token) = value.split_once(' ').ok_or_else(malformed_auth_header)?;
            let token = token.trim();
            if !scheme.eq_ignore_ascii_case("bearer")
                || token.is_empty()
                || token.len() > 512
                || !token.chars().all(is_token_char)
            {
                return Err(malformed_auth_header());
            }
            Ok(Presented::Bearer(token))
        }
    }
}

/// Why a presented credential is not usable right now.
fn usable_at(token: &ApiToken, now: Micros) -> bool {
    token.revoked_at.is_none()
        && token.expires_on.is_none_or(|e| now < e)
        && token.not_before.is_none_or(|nb| now >= nb)
}

/// Resolves a credential to a principal; 401 for unknown, revoked, expired or
/// not-yet-valid credentials.
pub async fn authenticate(store: &Store, presented: &Presented<'_>) -> Result<Principal, ApiError> {
    let now = now_micros();
    match *presented {
        Presented::Bearer(secret) => {
            let hash = hash_secret(secret);
            let token = store
                .find_api_token_by_hash(&hash)
                .await?
                .filter(|t| t.kind == CredentialKind::ApiToken)
                .filter(|t| hashes_equal(&t.secret_hash, &hash))
                .filter(|t| usable_at(t, now))
                .ok_or_else(ApiError::authentication)?;
            Ok(Principal { token })
        }
        Presented::GlobalKey { email, key } => {
            let hash = hash_secret(key);
            let mut found = None;
            // Compare against every key of the email so timing does not reveal
            // which one matched.
            for candidate in store.find_global_keys(email).await? {
                if hashes_equal(&candidate.secret_hash, &hash) && usable_at(&candidate, now) {
                    found = Some(candidate);
                }
            }
            found.map(|token| Principal { token }).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    code::GLOBAL_KEY_UNKNOWN,
                    "Unknown X-Auth-Key or X-Auth-Email",
                )
            })
        }
    }
}

/// Whether a bearer token verifies (for `tokens/verify`), with its record.
pub async fn verify_bearer(store: &Store, headers: &HeaderMap) -> Option<ApiToken> {
    let Ok(Presented::Bearer(secret)) = presented(headers) else {
        return None;
    };
    let hash = hash_secret(secret);
    let token = store.find_api_token_by_hash(&hash).await.ok().flatten()?;
    (token.kind == CredentialKind::ApiToken
        && hashes_equal(&token.secret_hash, &hash)
        && usable_at(&token, now_micros()))
    .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_bearer_and_global_key() {
        let h = headers(&[("authorization", "Bearer abc_DEF-123")]);
        assert_eq!(presented(&h).unwrap(), Presented::Bearer("abc_DEF-123"));
        let h = headers(&[
            ("x-auth-email", "a@b.c"),
            ("x-auth-key", "k"),
            ("authorization", "Bearer t"),
        ]);
        assert_eq!(
            presented(&h).unwrap(),
            Presented::GlobalKey {
                email: "a@b.c",
                key: "k"
            }
        );
    }

    #[test]
    fn rejects_missing_and_malformed() {
        assert_eq!(
            presented(&HeaderMap::new()).unwrap_err().errors[0].code,
            9106
        );
        for bad in ["Bearer", "Basic abc", "Bearer a b", "Bearer ", "token"] {
            let err = presented(&headers(&[("authorization", bad)])).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.errors[0].code, 6003);
            assert_eq!(err.errors[0].error_chain[0].code, 6111);
        }
    }

    #[test]
    fn generated_tokens_are_40_url_safe_chars_and_distinct() {
        let a = generate_token_secret().unwrap();
        let b = generate_token_secret().unwrap();
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(is_token_char));
        assert_ne!(a, b);
    }

    #[test]
    fn constant_time_compare() {
        assert!(hashes_equal(b"abc", b"abc"));
        assert!(!hashes_equal(b"abc", b"abd"));
        assert!(!hashes_equal(b"abc", b"ab"));
    }
}
