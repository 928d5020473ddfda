//! The origin certificate (`cert.pem`) in cloudflared's format: one PEM block
//! of type `ARGO TUNNEL TOKEN` whose body is the JSON
//! `{"zoneID","accountID","apiToken"[,"endpoint"]}`.
//!
//! culvert adds one key, `culvertAPIURL`: the API base URL `culvert login`
//! was given, so later commands need no `--api-url`. cloudflared ignores
//! unknown keys, so the same file works with `cloudflared tunnel
//! --origincert cert.pem --api-url …`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::error::CliError;

/// The PEM block type cloudflared reads.
pub const PEM_TYPE: &str = "ARGO TUNNEL TOKEN";

/// The decoded origin certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginCert {
    pub zone_id: String,
    pub account_id: String,
    pub api_token: String,
    /// cloudflared's `endpoint` (`fed` for FedRAMP); kept as read.
    pub endpoint: Option<String>,
    /// culvert extension: the API base URL.
    pub api_url: Option<String>,
}

impl OriginCert {
    /// The JSON body, keys in cloudflared's order.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("zoneID".into(), Value::String(self.zone_id.clone()));
        m.insert("accountID".into(), Value::String(self.account_id.clone()));
        m.insert("apiToken".into(), Value::String(self.api_token.clone()));
        if let Some(e) = self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            m.insert("endpoint".into(), Value::String(e.to_owned()));
        }
        if let Some(u) = self.api_url.as_deref().filter(|u| !u.is_empty()) {
            m.insert("culvertAPIURL".into(), Value::String(u.to_owned()));
        }
        Value::Object(m).to_string()
    }

    /// The PEM file: base64 lines of 64 characters, as Go's `pem.Encode` writes.
    pub fn to_pem(&self) -> String {
        let b64 = STANDARD.encode(self.to_json());
        let mut out = format!("-----BEGIN {PEM_TYPE}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END {PEM_TYPE}-----\n"));
        out
    }

    /// Parses a cert.pem. Like cloudflared: `PRIVATE KEY` and `CERTIFICATE`
    /// blocks (old certificates) are skipped, any other block type is an error,
    /// exactly one token block is required, and JSON keys match
    /// case-insensitively.
    pub fn from_pem(text: &str) -> Result<OriginCert, String> {
        let mut token: Option<OriginCert> = None;
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            let Some(kind) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            else {
                continue;
            };
            let end = format!("-----END {kind}-----");
            let mut body = String::new();
            let mut closed = false;
            for l in lines.by_ref() {
                if l == end {
                    closed = true;
                    break;
                }
                // PEM headers ("Key: value") precede the base64 body.
                if !l.contains(':') {
                    body.push_str(l);
                }
            }
            if !closed {
                return Err(format!("the {kind} block has no END line"));
            }
            match kind {
                "PRIVATE KEY" | "CERTIFICATE" => {}
                PEM_TYPE => {
                    if token.is_some() {
                        return Err("found multiple tokens in the certificate".into());
                    }
                    let json = STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("the token block is not base64: {e}"))?;
                    token = Some(Self::from_json(&json)?);
                }
                other => return Err(format!("unknown block {other} in the certificate")),
            }
        }
        token.ok_or_else(|| "missing token in the certificate".into())
    }

    fn from_json(json: &[u8]) -> Result<OriginCert, String> {
        let map: Map<String, Value> = serde_json::from_slice(json)
            .map_err(|e| format!("the token block is not a JSON object: {e}"))?;
        let get = |key: &str| -> Result<Option<String>, String> {
            match map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                None | Some((_, Value::Null)) => Ok(None),
                Some((_, Value::String(s))) => Ok(Some(s.clone())),
                Some((k, _)) => Err(format!("{k} must be a string")),
            }
        };
        Ok(OriginCert {
            zone_id: get("zoneID")?.unwrap_or_default(),
            account_id: get("accountID")?.unwrap_or_default(),
            api_token: get("apiToken")?.unwrap_or_default(),
            endpoint: get("endpoint")?.filter(|e| !e.is_empty()),
            api_url: get("culvertAPIURL")?.filter(|u| !u.is_empty()),
        })
    }

    /// Reads and parses a cert.pem file.
    pub fn read(path: &Path) -> Result<OriginCert, CliError> {
        let text = crate::files::read_small(path, "reading the origin certificate")?;
        let cert = OriginCert::from_pem(&text).map_err(|e| {
            CliError::usage(format!(
                "{} is not an origin certificate: {e}",
                path.display()
            ))
        })?;
        if cert.api_token.is_empty() || cert.account_id.is_empty() {
            return Err(CliError::usage(format!(
                "{} has no apiToken or accountID: run `culvert login` again",
                path.display()
            )));
        }
        Ok(cert)
    }
}

/// Where `culvert login` writes the certificate by default: `~/.culvert/cert.pem`.
pub fn default_cert_path() -> Option<PathBuf> {
    crate::files::home_dir().map(|h| h.join(".culvert").join("cert.pem"))
}

/// The certificate to read: the flag (or `TUNNEL_ORIGIN_CERT`), else
/// `~/.culvert/cert.pem`, else cloudflared's `~/.cloudflared/cert.pem`.
pub fn find_cert_path(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = flag {
        return Ok(crate::files::expand_tilde(p));
    }
    let home = crate::files::home_dir()
        .ok_or_else(|| CliError::usage("HOME is not set: pass --origincert PATH"))?;
    let candidates = [
        home.join(".culvert").join("cert.pem"),
        home.join(".cloudflared").join("cert.pem"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            CliError::usage(format!(
                "no origin certificate at {}: run `culvert login --api-url URL --token TOKEN --account ID` or pass --origincert PATH (TUNNEL_ORIGIN_CERT)",
                candidates[0].display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> OriginCert {
        OriginCert {
            zone_id: "z".repeat(32),
            account_id: "a".repeat(32),
            api_token: "tok".into(),
            endpoint: None,
            api_url: Some("http://127.0.0.1:8787/client/v4".into()),
        }
    }

    #[test]
    fn pem_shape_is_cloudflareds() {
        let pem = sample().to_pem();
        assert!(pem.starts_with("-----BEGIN ARGO TUNNEL TOKEN-----\n"));
        assert!(pem.ends_with("-----END ARGO TUNNEL TOKEN-----\n"));
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(line.len() <= 64);
        }
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let json: Value = serde_json::from_slice(&STANDARD.decode(body).unwrap()).unwrap();
        assert_eq!(json["zoneID"], "z".repeat(32));
        assert_eq!(json["accountID"], "a".repeat(32));
        assert_eq!(json["apiToken"], "tok");
        assert!(json.get("endpoint").is_none());
        assert_eq!(OriginCert::from_pem(&pem).unwrap(), sample());
    }

    #[test]
    fn old_certificates_and_errors() {
        let tok = sample().to_pem();
        let old = format!(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{tok}"
        );
        assert_eq!(OriginCert::from_pem(&old).unwrap(), sample());
        let json = r#"{"ZONEID":"z","AccountId":"a","APITOKEN":"t","endpoint":"fed"}"#;
        let pem = format!(
            "-----BEGIN ARGO TUNNEL TOKEN-----\n{}\n-----END ARGO TUNNEL TOKEN-----\n",
            STANDARD.encode(json)
        );
        let c = OriginCert::from_pem(&pem).unwrap();
        assert_eq!(
            (
                c.zone_id.as_str(),
                c.account_id.as_str(),
                c.api_token.as_str()
            ),
            ("z", "a", "t")
        );
        assert_eq!(c.endpoint.as_deref(), Some("fed"));
        assert!(
            OriginCert::from_pem(&format!("{tok}{tok}"))
                .unwrap_err()
                .contains("multiple")
        );
        assert!(OriginCert::from_pem("").unwrap_err().contains("missing"));
        assert!(
            OriginCert::from_pem("-----BEGIN FOO-----\nAA\n-----END FOO-----\n")
                .unwrap_err()
                .contains("unknown block FOO")
        );
        assert!(OriginCert::from_pem("-----BEGIN ARGO TUNNEL TOKEN-----\n!!\n").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(zone in "[0-9a-f]{0,32}", acct in "[0-9a-f]{1,32}", tok in "[ -~]{1,80}", url in proptest::option::of("[ -~]{1,40}")) {
            let c = OriginCert { zone_id: zone, account_id: acct, api_token: tok, endpoint: None, api_url: url };
            prop_assert_eq!(OriginCert::from_pem(&c.to_pem()).unwrap(), c);
        }

        #[test]
        fn parser_is_total(s in any::<String>()) {
            let _ = OriginCert::from_pem(&s);
        }
    }
}
