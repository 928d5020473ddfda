//! Tunnel tokens and cloudflared credentials files.
//!
//! A tunnel token is `base64.StdEncoding(JSON)` with the keys `a` (account
//! tag), `t` (tunnel UUID), `s` (secret, itself standard base64) and the
//! optional `e` (endpoint, e.g. `"fed"`). See `shared/spec/api.md` §10.2 and
//! `shared/spec/edge-protocol.md` §2.
//!
//! Decoding follows cloudflared (Go `encoding/json` + `base64.StdEncoding`):
//! the standard alphabet with `=` padding is required, unknown keys are
//! ignored and keys match case-insensitively. Errors never echo the token or
//! secret, because they end up in logs.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Upper bound on an encoded token we are willing to decode. Real tokens are
/// about 200 bytes; the bound keeps hostile input from costing memory.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Upper bound on a credentials file we are willing to parse.
pub const MAX_CREDENTIALS_LEN: usize = 64 * 1024;

/// Go's `base64.StdEncoding`: standard alphabet, padding required. Unlike the
/// `base64` crate's `STANDARD`, Go (without `.Strict()`) accepts non-zero
/// trailing bits, so we do too to accept every token cloudflared accepts.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Why a token or credentials file was rejected.
///
/// Every variant is permanent: retrying with the same input can never
/// succeed; the operator has to supply a different token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("tunnel token is empty")]
    Empty,
    #[error("tunnel token is too long ({len} bytes, limit {limit})")]
    TooLong { len: usize, limit: usize },
    #[error("tunnel token is not standard padded base64: {0}")]
    Base64(String),
    #[error("tunnel token payload is not a JSON object ({0})")]
    Json(String),
    #[error("tunnel token lacks required key `{0}`")]
    MissingField(&'static str),
    #[error("tunnel token key `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl TokenError {
    /// Always false: a malformed token stays malformed. Present so callers
    /// can treat all culvert-proto errors uniformly.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The tunnel token accepted by `cloudflared tunnel run --token`.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelToken {
    pub account_tag: String,
    pub tunnel_id: Uuid,
    pub secret: Vec<u8>,
    /// `None` and `Some("")` are equivalent (Go `omitempty`); decoding yields
    /// `None` for both.
    pub endpoint: Option<String>,
}

// Manual Debug so the secret never lands in logs.
impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelToken")
            .field("account_tag", &self.account_tag)
            .field("tunnel_id", &self.tunnel_id)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Serialization shape of the token; field order is the wire order (a, t, s, e),
/// which is what Cloudflare's API emits (tokens start with `eyJhIjoi`).
#[derive(Serialize)]
struct TokenWire<'a> {
    a: &'a str,
    t: String,
    s: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<&'a str>,
}

impl TunnelToken {
    /// Standard padded base64 of compact JSON `{"a":…,"t":…,"s":…[,"e":…]}`.
    pub fn encode(&self) -> String {
        let wire = TokenWire {
            a: &self.account_tag,
            t: self.tunnel_id.hyphenated().to_string(),
            s: GO_STD.encode(&self.secret),
            e: non_empty(self.endpoint.as_deref()),
        };
        // Serializing a struct of strings to a Vec cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        GO_STD.encode(json)
    }

    /// Parses a token the way cloudflared does. Surrounding ASCII whitespace
    /// is trimmed (tokens are often pasted or read from files with a newline).
    pub fn decode(token: &str) -> Result<TunnelToken, TokenError> {
        let token = token.trim_ascii();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                limit: MAX_TOKEN_LEN,
            });
        }
        let json = GO_STD
            .decode(token)
            .map_err(|e| TokenError::Base64(e.to_string()))?;
        let map: Map<String, Value> =
            serde_json::from_slice(&json).map_err(|e| TokenError::Json(json_error_summary(&e)))?;

        let account_tag = string_field(&map, "a", "a")?.ok_or(TokenError::MissingField("a"))?;
        let tunnel_id = string_field(&map, "t", "t")?
            .ok_or(TokenError::MissingField("t"))
            .and_then(|t| parse_uuid("t", &t))?;
        let secret = string_field(&map, "s", "s")?
            .ok_or(TokenError::MissingField("s"))
            .and_then(|s| decode_b64_field("s", &s))?;
        let endpoint = string_field(&map, "e", "e")?.filter(|e| !e.is_empty());
        Ok(TunnelToken {
            account_tag,
            tunnel_id,
            secret,
            endpoint,
        })
    }

    /// The equivalent credentials file (`~/.cloudflared/<TunnelID>.json`).
    pub fn to_credentials(&self) -> Credentials {
        Credentials {
            account_tag: self.account_tag.clone(),
            tunnel_secret: self.secret.clone(),
            tunnel_id: self.tunnel_id,
            endpoint: non_empty(self.endpoint.as_deref()).map(str::to_owned),
        }
    }
}

impl From<&Credentials> for TunnelToken {
    fn from(c: &Credentials) -> Self {
        TunnelToken {
            account_tag: c.account_tag.clone(),
            tunnel_id: c.tunnel_id,
            secret: c.tunnel_secret.clone(),
            endpoint: non_empty(c.endpoint.as_deref()).map(str::to_owned),
        }
    }
}

/// cloudflared's credentials file:
/// `{"AccountTag":…,"TunnelSecret":<base64>,"TunnelID":<uuid>[,"Endpoint":…]}`.
///
/// Serde uses the Go field names; `Endpoint` is omitted when empty
/// (`json:"Endpoint,omitempty"`). Deserialization mirrors Go: keys match
/// case-insensitively, unknown keys are ignored, and a missing `TunnelID`
/// (old files) yields the nil UUID, which the caller fills from the CLI
/// argument as cloudflared does.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub account_tag: String,
    pub tunnel_secret: Vec<u8>,
    pub tunnel_id: Uuid,
    pub endpoint: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("account_tag", &self.account_tag)
            .field(
                "tunnel_secret",
                &format_args!("<{} bytes>", self.tunnel_secret.len()),
            )
            .field("tunnel_id", &self.tunnel_id)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

#[derive(Serialize)]
struct CredentialsWire<'a> {
    #[serde(rename = "AccountTag")]
    account_tag: &'a str,
    #[serde(rename = "TunnelSecret")]
    tunnel_secret: String,
    #[serde(rename = "TunnelID")]
    tunnel_id: String,
    #[serde(rename = "Endpoint", skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
}

impl Serialize for Credentials {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CredentialsWire {
            account_tag: &self.account_tag,
            tunnel_secret: GO_STD.encode(&self.tunnel_secret),
            tunnel_id: self.tunnel_id.hyphenated().to_string(),
            endpoint: non_empty(self.endpoint.as_deref()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Credentials::from_map(&map).map_err(D::Error::custom)
    }
}

impl Credentials {
    /// Parses a credentials file body (bounded by [`MAX_CREDENTIALS_LEN`]).
    pub fn from_json(json: &str) -> Result<Credentials, TokenError> {
        if json.len() > MAX_CREDENTIALS_LEN {
            return Err(TokenError::TooLong {
                len: json.len(),
                limit: MAX_CREDENTIALS_LEN,
            });
        }
        let map: Map<String, Value> =
            serde_json::from_str(json).map_err(|e| TokenError::Json(json_error_summary(&e)))?;
        Credentials::from_map(&map)
    }

    /// Compact JSON in cloudflared's field order.
    pub fn to_json(&self) -> String {
        // Serializing strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The equivalent tunnel token.
    pub fn to_token(&self) -> TunnelToken {
        TunnelToken::from(self)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Credentials, TokenError> {
        let account_tag = string_field(map, "AccountTag", "AccountTag")?
            .ok_or(TokenError::MissingField("AccountTag"))?;
        let tunnel_secret = string_field(map, "TunnelSecret", "TunnelSecret")?
            .ok_or(TokenError::MissingField("TunnelSecret"))
            .and_then(|s| decode_b64_field("TunnelSecret", &s))?;
        let tunnel_id = match string_field(map, "TunnelID", "TunnelID")? {
            Some(t) => parse_uuid("TunnelID", &t)?,
            None => Uuid::nil(),
        };
        let endpoint = string_field(map, "Endpoint", "Endpoint")?.filter(|e| !e.is_empty());
        Ok(Credentials {
            account_tag,
            tunnel_secret,
            tunnel_id,
            endpoint,
        })
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// Looks up `key` like Go's `encoding/json`: keys match case-insensitively and
/// a later duplicate wins. JSON `null` counts as absent (Go leaves the zero
/// value). Non-string values are rejected.
fn string_field(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, TokenError> {
    let found = map
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .next_back();
    match found {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::InvalidField {
            field,
            reason: "expected a string".into(),
        }),
    }
}

fn parse_uuid(field: &'static str, s: &str) -> Result<Uuid, TokenError> {
    // uuid accepts the same textual forms as Go's google/uuid (hyphenated,
    // simple, braced, urn:uuid:).
    Uuid::parse_str(s).map_err(|_| TokenError::InvalidField {
        field,
        reason: "not a UUID".into(),
    })
}

fn decode_b64_field(field: &'static str, s: &str) -> Result<Vec<u8>, TokenError> {
    GO_STD.decode(s).map_err(|_| TokenError::InvalidField {
        field,
        reason: "not standard padded base64".into(),
    })
}

/// serde_json messages can quote input (i.e. secrets); keep only the category
/// and position.
fn json_error_summary(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ACCOUNT: &str = "699d98642c564d2e855e9661899b7252";
    const TUNNEL: &str = "5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162";

    fn secret() -> Vec<u8> {
        (0u8..32).collect()
    }

    fn sample() -> TunnelToken {
        TunnelToken {
            account_tag: ACCOUNT.into(),
            tunnel_id: Uuid::parse_str(TUNNEL).unwrap(),
            secret: secret(),
            endpoint: None,
        }
    }

    // Byte-exact vector, built by hand from api.md §10.2:
    // base64(`{"a":"<account>","t":"<uuid>","s":"<base64 of 0..32>"}`).
    const SAMPLE_JSON: &str = concat!(
        r#"{"a":"699d98642c564d2e855e9661899b7252","#,
        r#""t":"5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162","#,
        r#""s":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#
    );
    const SAMPLE_TOKEN: &str = concat!(
        "eyJhIjoiNjk5ZDk4NjQyYzU2NGQyZTg1NWU5NjYxODk5YjcyNTIiLCJ0IjoiNWEzYmMx",
        "ZTQtN2YwZC00YjhlLTljMmEtMWQyZTNmNDA1MTYyIiwicyI6IkFBRUNBd1FGQmdjSUNR",
        "b0xEQTBPRHhBUkVoTVVGUllYR0JrYUd4d2RIaDg9In0="
    );

    #[test]
    fn encode_is_byte_exact() {
        let token = sample().encode();
        assert!(token.starts_with("eyJhIjoi"));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&token)
                .unwrap(),
            SAMPLE_JSON.as_bytes()
        );
        assert_eq!(token, SAMPLE_TOKEN);
    }

    #[test]
    fn decode_vector() {
        assert_eq!(TunnelToken::decode(SAMPLE_TOKEN).unwrap(), sample());
        // Trailing newline from a token file is tolerated.
        assert_eq!(
            TunnelToken::decode(&format!("{SAMPLE_TOKEN}\n")).unwrap(),
            sample()
        );
    }

    #[test]
    fn endpoint_round_trip_and_order() {
        let mut t = sample();
        t.endpoint = Some("fed".into());
        let enc = t.encode();
        let json = GO_STD.decode(&enc).unwrap();
        let json = String::from_utf8(json).unwrap();
        assert!(json.ends_with(r#","e":"fed"}"#), "{json}");
        assert_eq!(TunnelToken::decode(&enc).unwrap(), t);
        // Empty endpoint is omitted, like Go's omitempty.
        t.endpoint = Some(String::new());
        assert_eq!(t.encode(), SAMPLE_TOKEN);
    }

    #[test]
    fn decode_cloudflared_order_and_unknown_keys() {
        // cloudflared re-encodes as a, s, t; culvert may add extra keys.
        let json = r#"{"a":"699d98642c564d2e855e9661899b7252","s":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","t":"5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162","edge":"127.0.0.1:7844"}"#;
        let tok = GO_STD.encode(json);
        assert_eq!(TunnelToken::decode(&tok).unwrap(), sample());
    }

    #[test]
    fn decode_keys_case_insensitive_like_go() {
        let json = r#"{"A":"699d98642c564d2e855e9661899b7252","S":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","T":"5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162"}"#;
        assert_eq!(TunnelToken::decode(&GO_STD.encode(json)).unwrap(), sample());
    }

    #[test]
    fn rejects_unpadded_and_url_safe() {
        let unpadded = SAMPLE_TOKEN.trim_end_matches('=');
        assert_ne!(unpadded, SAMPLE_TOKEN);
        assert!(matches!(
            TunnelToken::decode(unpadded),
            Err(TokenError::Base64(_))
        ));
        // A payload whose standard encoding contains '+' or '/'.
        let mut t = sample();
        t.account_tag = "\u{3fe}\u{3ff}?>".into();
        let std = t.encode();
        assert!(std.contains('+') || std.contains('/'), "{std}");
        assert!(TunnelToken::decode(&std).is_ok());
        let url = std.replace('+', "-").replace('/', "_");
        assert!(matches!(
            TunnelToken::decode(&url),
            Err(TokenError::Base64(_))
        ));
        let url_unpadded = url.trim_end_matches('=');
        assert!(TunnelToken::decode(url_unpadded).is_err());
    }

    #[test]
    fn rejects_bad_payloads() {
        let enc = |s: &str| GO_STD.encode(s);
        assert_eq!(TunnelToken::decode("  "), Err(TokenError::Empty));
        assert!(matches!(
            TunnelToken::decode(&enc("[]")),
            Err(TokenError::Json(_))
        ));
        assert_eq!(
            TunnelToken::decode(&enc(r#"{"a":"x","s":"AA=="}"#)),
            Err(TokenError::MissingField("t"))
        );
        assert!(matches!(
            TunnelToken::decode(&enc(r#"{"a":"x","t":"nope","s":"AA=="}"#)),
            Err(TokenError::InvalidField { field: "t", .. })
        ));
        assert!(matches!(
            TunnelToken::decode(&enc(&format!(r#"{{"a":"x","t":"{TUNNEL}","s":"AA"}}"#))),
            Err(TokenError::InvalidField { field: "s", .. })
        ));
        assert!(matches!(
            TunnelToken::decode(&enc(&format!(r#"{{"a":1,"t":"{TUNNEL}","s":"AA=="}}"#))),
            Err(TokenError::InvalidField { field: "a", .. })
        ));
        let long = "A".repeat(MAX_TOKEN_LEN + 4);
        assert!(matches!(
            TunnelToken::decode(&long),
            Err(TokenError::TooLong { .. })
        ));
    }

    #[test]
    fn errors_do_not_leak_secret() {
        let json = r#"{"a":"x","t":"5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162","s":"SECRETSECRET","#;
        let err = TunnelToken::decode(&GO_STD.encode(json)).unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert!(!format!("{:?}", sample()).contains("AAEC"));
    }

    #[test]
    fn credentials_json() {
        let c = sample().to_credentials();
        assert_eq!(
            c.to_json(),
            r#"{"AccountTag":"699d98642c564d2e855e9661899b7252","TunnelSecret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","TunnelID":"5a3bc1e4-7f0d-4b8e-9c2a-1d2e3f405162"}"#
        );
        assert_eq!(Credentials::from_json(&c.to_json()).unwrap(), c);
        let via_serde: Credentials = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(via_serde, c);
        assert_eq!(c.to_token(), sample());

        let mut fed = c.clone();
        fed.endpoint = Some("fed".into());
        assert!(fed.to_json().ends_with(r#","Endpoint":"fed"}"#));
        assert_eq!(Credentials::from_json(&fed.to_json()).unwrap(), fed);
    }

    #[test]
    fn credentials_go_leniency() {
        // Lower-case keys, extra keys and a missing TunnelID (old files).
        let c = Credentials::from_json(
            r#"{"accounttag":"abc","tunnelsecret":"AQID","TunnelName":"x"}"#,
        )
        .unwrap();
        assert_eq!(c.account_tag, "abc");
        assert_eq!(c.tunnel_secret, vec![1, 2, 3]);
        assert!(c.tunnel_id.is_nil());
        assert!(Credentials::from_json(r#"{"TunnelID":"x"}"#).is_err());
    }

    fn arb_token() -> impl Strategy<Value = TunnelToken> {
        (
            any::<String>(),
            any::<u128>(),
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::option::of(".+"),
        )
            .prop_map(|(a, id, s, e)| TunnelToken {
                account_tag: a,
                tunnel_id: Uuid::from_u128(id),
                secret: s,
                endpoint: e,
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = TunnelToken::decode(&s);
            let _ = Credentials::from_json(&s);
        }

        #[test]
        fn decode_never_panics_on_valid_base64(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TunnelToken::decode(&GO_STD.encode(&b));
        }

        #[test]
        fn round_trip(t in arb_token()) {
            prop_assert_eq!(TunnelToken::decode(&t.encode()).unwrap(), t.clone());
            let c = t.to_credentials();
            prop_assert_eq!(Credentials::from_json(&c.to_json()).unwrap(), c);
        }
    }
}
