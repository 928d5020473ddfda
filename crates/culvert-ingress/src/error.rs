//! Validation errors whose `Display` is cloudflared's message, byte for byte.

use crate::gourl::GoUrlError;

/// Why a configuration was rejected.
///
/// `Display` of the cloudflared-originated variants is exactly cloudflared's
/// text; the variants marked *culvert* describe input cloudflared would reject
/// with a Go decoder error (type mismatches) or that culvert cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No ingress rules at all (cloudflared's `ErrNoIngressRules`).
    #[error("The config file doesn't contain any ingress rules")]
    NoIngressRules,
    /// The last rule has a hostname (other than `*`) or a path.
    #[error(
        "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
    )]
    LastRuleNotCatchAll,
    /// A rule before the last one matches everything.
    #[error(
        "Rule #{rule_number} is matching the hostname '{hostname}', but this will match every hostname, meaning the rules which follow it will never be triggered."
    )]
    RuleShouldNotBeCatchAll {
        /// 1-based, as cloudflared prints it.
        rule_number: usize,
        /// The hostname as written (`""` or `"*"`).
        hostname: String,
    },
    /// A `*` anywhere but the first character of the hostname.
    #[error(
        "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
    )]
    BadWildcard,
    /// The hostname parses as `host:port`.
    #[error("Hostname cannot contain a port")]
    HostnameContainsPort,
    /// `path` is not a valid Go regular expression.
    #[error("Rule #{rule_number} has an invalid regex: {detail}")]
    InvalidPathRegex {
        /// 1-based.
        rule_number: usize,
        /// Go's `regexp` error, e.g. ``error parsing regexp: missing closing ): `(`` ``.
        detail: String,
    },
    /// Go's `url.Parse` rejected the service, e.g.
    /// `parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host`.
    #[error("{0}")]
    InvalidServiceUrl(GoUrlError),
    /// The service URL has no scheme or no host.
    #[error("{service} is an invalid address, please make sure it has a scheme and a hostname")]
    ServiceMissingSchemeOrHost {
        /// The service as written.
        service: String,
    },
    /// The service URL has a path (even just `/`).
    #[error(
        "{service} is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path"
    )]
    ServiceHasPath {
        /// The service as written.
        service: String,
    },
    /// `http_status:` not followed by an integer.
    #[error("invalid HTTP status code: {detail}")]
    HttpStatusNotANumber {
        /// Go's `strconv.Atoi` error.
        detail: String,
    },
    /// `http_status:` outside 100..=999.
    #[error("invalid HTTP status code: {code}")]
    HttpStatusOutOfRange {
        /// The parsed number.
        code: i64,
    },
    /// A `socks-proxy` rule's `originRequest.ipRules` entry is invalid.
    #[error("unable to create ip rule for socks-proxy: {detail}")]
    InvalidIpRule {
        /// cloudflared's `ipaccess` message, e.g. `unable to parse cidr: 1.2.3/8`.
        detail: String,
    },
    /// `access.required` with audience tags but no team name.
    #[error("access.TeamName cannot be blank when access.audTags are present")]
    AccessTeamNameBlank,
    /// *culvert*: a field has the wrong JSON type or an out-of-range value
    /// (cloudflared fails in its JSON decoder there, with a less helpful text).
    #[error("{path}: {detail}")]
    InvalidField {
        /// JSON path, e.g. `ingress[0].originRequest.noTLSVerify`.
        path: String,
        /// What was expected and found.
        detail: String,
    },
    /// *culvert*: Go accepts the service URL but it cannot be used as an origin
    /// (e.g. a port above 65535), so culvert rejects it up front.
    #[error("{service} is an invalid address: {detail}")]
    UnusableService {
        /// The service as written.
        service: String,
        /// Why.
        detail: String,
    },
}

/// A rejected configuration. `Display` is the message the REST API puts after
/// `Bad Configuration: Validation failed: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ValidationError {
    kind: ErrorKind,
    rule: Option<usize>,
}

impl ValidationError {
    pub(crate) fn new(kind: ErrorKind, rule: Option<usize>) -> Self {
        Self { kind, rule }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// 0-based index of the offending ingress rule, if the error is about one.
    pub fn rule_index(&self) -> Option<usize> {
        self.rule
    }
}

impl From<ErrorKind> for ValidationError {
    fn from(kind: ErrorKind) -> Self {
        Self { kind, rule: None }
    }
}
