//! cloudflared-compatible ingress rules for culvert: parse and validate the
//! `config` object of `PUT …/configurations` (and the ingress part of a local
//! `config.yml`, once converted to JSON), reproducing cloudflared's checks and
//! its error messages byte for byte, and match a request's host and path to a
//! rule the way cloudflared routes it. The crate is pure: no I/O, no clocks, no
//! global state, and no panics on any input. Reading files, storing the
//! original JSON and proxying requests are the callers' business (culvert-api
//! and the connector).
//!
//! ```
//! let config = serde_json::json!({
//!     "ingress": [
//!         {"hostname": "app.example.com", "service": "http://localhost:8000"},
//!         {"service": "http_status:404"}
//!     ]
//! });
//! let ingress = culvert_ingress::parse_remote_config(&config).unwrap();
//! assert_eq!(ingress.find_match("APP.example.com:443", "/").0, 0);
//! assert_eq!(ingress.find_match("other.example.com", "/").0, 1);
//!
//! let bad = serde_json::json!({"ingress": [{"hostname": "a.com", "service": "http://x"}]});
//! assert_eq!(
//!     culvert_ingress::parse_remote_config(&bad).unwrap_err().to_string(),
//!     "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
//! );
//! ```
#![forbid(unsafe_code)]

mod decode;
mod error;
mod godur;
mod goregex;
mod gotext;
pub mod gourl;
mod host;
mod origin;
mod service;

use std::fmt;

use serde_json::Value;

pub use error::{ErrorKind, ValidationError};
pub use godur::GoDuration;
pub use host::{split_host_port, strip_port};
pub use origin::{
    Access, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_CONNECTIONS, DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_PROXY_ADDRESS, DEFAULT_TCP_KEEP_ALIVE, DEFAULT_TLS_TIMEOUT,
    DEFAULT_WARP_CONNECT_TIMEOUT, IpAccessPolicy, IpAccessRule, IpRule, OriginRequest, WarpRouting,
};
pub use service::Service;

/// Which wire rules to decode with. They differ only in what a duration may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The REST API / edge-push JSON: durations are integer seconds, as every
    /// cloudflared version's `CustomDuration` decoder requires. Anything else
    /// is rejected, because the stored JSON is pushed verbatim to connectors
    /// that would fail on it.
    Remote,
    /// A local `config.yml` converted to JSON: durations may also be Go
    /// duration strings (`30s`, `1m30s`) or fractional seconds, and scalar
    /// values are accepted for string fields (as yaml.v3 does).
    Local,
}

/// Validates the JSON `config` object of the REST API
/// (`{"ingress":[…],"originRequest":{…},"warp-routing":{…}}`).
///
/// Unknown keys anywhere are ignored (the API stores the original JSON
/// verbatim). Keys match case-insensitively, like Go's decoder.
pub fn parse_remote_config(config: &Value) -> Result<Ingress, ValidationError> {
    parse_config(config, Dialect::Remote)
}

/// Validates the ingress part of a local `config.yml`, given as the JSON value
/// of the whole document (other top-level keys such as `tunnel` are ignored).
pub fn parse_local_config(config: &Value) -> Result<Ingress, ValidationError> {
    parse_config(config, Dialect::Local)
}

/// [`parse_remote_config`] / [`parse_local_config`] with an explicit dialect.
///
/// Decoding errors (wrong JSON types) come first, then cloudflared's
/// `validateIngress` runs rule by rule, and within a rule checks the service,
/// then `access`, then the hostname, then the path regex.
pub fn parse_config(config: &Value, dialect: Dialect) -> Result<Ingress, ValidationError> {
    let raw = decode::config(config, dialect)?;
    let total = raw.ingress.len();
    if total == 0 {
        return Err(ErrorKind::NoIngressRules.into());
    }
    let defaults = raw.origin_request;
    let mut rules = Vec::with_capacity(total);
    for (i, r) in raw.ingress.into_iter().enumerate() {
        let at = |kind| ValidationError::new(kind, Some(i));
        let mut effective = defaults.with_overrides(&r.origin_request);
        let (service, ip_access) =
            service::parse(&r.service, &r.origin_request, &mut effective).map_err(at)?;

        // Only the rule's own `access` is validated (and enforced) by cloudflared.
        if let Some(a) = &r.origin_request.access
            && a.required
            && a.team_name.is_empty()
            && !a.aud_tag.is_empty()
        {
            return Err(at(ErrorKind::AccessTeamNameBlank));
        }

        host::validate(&r.hostname, &r.path, i, total).map_err(at)?;
        let punycode = if host::is_catch_all(&r.hostname, &r.path) {
            None
        } else {
            host::punycode_alias(&r.hostname)
        };

        let path = if r.path.is_empty() {
            None
        } else {
            Some(PathPattern::new(&r.path).map_err(|detail| {
                at(ErrorKind::InvalidPathRegex {
                    rule_number: i + 1,
                    detail,
                })
            })?)
        };

        rules.push(Rule {
            hostname: (!r.hostname.is_empty()).then_some(r.hostname),
            punycode_hostname: punycode,
            path,
            service,
            origin_request: effective,
            raw_origin_request: r.origin_request,
            socks_policy: IpAccessPolicy { rules: ip_access },
        });
    }
    Ok(Ingress {
        rules,
        origin_request: defaults,
        warp_routing: raw.warp_routing,
    })
}

/// A parsed, validated ingress configuration. `rules` is never empty and its
/// last rule matches everything.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// The rules in order.
    pub rules: Vec<Rule>,
    /// The top-level `originRequest` exactly as written (the defaults every
    /// rule's [`Rule::origin_request`] was merged over).
    pub origin_request: OriginRequest,
    /// The `warp-routing` section as written.
    pub warp_routing: WarpRouting,
}

impl Ingress {
    /// cloudflared's `FindMatchingRule`: the first rule whose hostname matches
    /// (exact, case-insensitive; `*.x` matches any host ending in `.x`; the
    /// punycode form of an IDN rule hostname also matches; a port in `host` is
    /// ignored) and whose path regex (unanchored, Go syntax) matches `path`.
    /// Falls back to the last rule. Returns the rule index and the rule.
    pub fn find_match(&self, host: &str, path: &str) -> (usize, &Rule) {
        let host = strip_port(host);
        if let Some(found) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(host, path))
        {
            return found;
        }
        let last = self.rules.len().saturating_sub(1);
        // `rules` is non-empty for every `Ingress` this crate builds; the
        // fallback keeps a hand-built empty one from panicking.
        match self.rules.get(last) {
            Some(r) => (last, r),
            None => (0, &FALLBACK_RULE),
        }
    }

    /// The last rule, which matches everything.
    pub fn catch_all(&self) -> &Rule {
        self.rules.last().unwrap_or(&FALLBACK_RULE)
    }

    /// What cloudflared serves before it has any rules: one catch-all that
    /// answers 503 (`GetDefaultIngressRules`).
    pub fn default_no_rules() -> Ingress {
        Ingress {
            rules: vec![Rule::catch_all_status(503)],
            origin_request: OriginRequest::default(),
            warp_routing: WarpRouting::default(),
        }
    }
}

static FALLBACK_RULE: Rule = Rule {
    hostname: None,
    punycode_hostname: None,
    path: None,
    service: Service::HttpStatus(503),
    origin_request: OriginRequest::EMPTY,
    raw_origin_request: OriginRequest::EMPTY,
    socks_policy: IpAccessPolicy { rules: Vec::new() },
};

/// One validated ingress rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The hostname pattern as written; `None` when absent or empty. `"*"` is
    /// kept as `Some("*")` and, like `None`, matches every host.
    pub hostname: Option<String>,
    /// The punycode (ASCII) form of an IDN `hostname`, also matched.
    pub punycode_hostname: Option<String>,
    /// The path regex, if any.
    pub path: Option<PathPattern>,
    /// Where matching requests go.
    pub service: Service,
    /// The **effective** settings for this rule: the top-level
    /// `originRequest` with this rule's `originRequest` merged over it
    /// (cloudflared's `Rule.Config`), with `bastion_mode` forced on for
    /// [`Service::Bastion`]. Accessors give cloudflared's defaults for the rest.
    pub origin_request: OriginRequest,
    /// This rule's own `originRequest`, as written (what `access` and the
    /// socks policy are taken from).
    pub raw_origin_request: OriginRequest,
    /// For [`Service::SocksProxy`]: the validated policy built from this rule's
    /// own `ipRules` (default deny). Empty otherwise.
    pub socks_policy: IpAccessPolicy,
}

impl Rule {
    fn catch_all_status(code: u16) -> Rule {
        Rule {
            hostname: None,
            punycode_hostname: None,
            path: None,
            service: Service::HttpStatus(code),
            origin_request: OriginRequest::default(),
            raw_origin_request: OriginRequest::default(),
            socks_policy: IpAccessPolicy::default(),
        }
    }

    /// cloudflared's `Rule.Matches`. `host` must already be without port
    /// (see [`strip_port`]).
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match self.hostname.as_deref() {
            None | Some("" | "*") => true,
            Some(rule) => {
                host::match_host(rule, host)
                    || self
                        .punycode_hostname
                        .as_deref()
                        .is_some_and(|p| host::match_host(p, host))
            }
        };
        host_ok && self.path.as_ref().is_none_or(|p| p.is_match(path))
    }

    /// Whether this rule matches every request (no hostname or `*`, no path).
    pub fn is_catch_all(&self) -> bool {
        matches!(self.hostname.as_deref(), None | Some("*")) && self.path.is_none()
    }

    /// The Access settings cloudflared enforces for this rule: only the rule's
    /// own `access` with `required: true` installs the JWT check.
    pub fn required_access(&self) -> Option<&Access> {
        self.raw_origin_request
            .access
            .as_ref()
            .filter(|a| a.required)
    }
}

/// A rule's `path`: a Go (RE2) regular expression, matched unanchored.
#[derive(Clone)]
pub struct PathPattern {
    source: String,
    regex: regex::Regex,
}

impl PathPattern {
    /// Compiles a Go regular expression; the error is Go's `regexp` message
    /// (e.g. ``error parsing regexp: missing closing ): `(` ``).
    pub fn new(go_regex: &str) -> Result<PathPattern, String> {
        goregex::compile(go_regex)
            .map(|regex| PathPattern {
                source: go_regex.to_owned(),
                regex,
            })
            .map_err(|e| e.to_string())
    }

    /// The pattern as written (Go syntax).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The equivalent `regex` crate pattern.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    /// Unanchored match, as Go's `MatchString`.
    pub fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for PathPattern {}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PathPattern").field(&self.source).finish()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests;
