//! Hostname rules: Go's `net.SplitHostPort`, cloudflared's hostname
//! validation, wildcard matching and the punycode alias of IDN hostnames.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

use crate::error::ErrorKind;

/// Go's `net.SplitHostPort`: `Some((host, port))` if `s` is `host:port` or
/// `[host]:port` (the port may be empty or non-numeric, as in Go).
pub fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(':')?;
    let (host, inner_from, close_from) = if s.starts_with('[') {
        let end = s.find(']')?;
        if end + 1 != i {
            // `]` not directly followed by the last colon: missing port or too many colons.
            return None;
        }
        (&s[1..end], 1, end + 1)
    } else {
        let host = &s[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if s[inner_from..].contains('[') || s[close_from..].contains(']') {
        return None;
    }
    Some((host, &s[i + 1..]))
}

/// The request host without its port, as cloudflared matches it.
pub fn strip_port(host: &str) -> &str {
    split_host_port(host).map_or(host, |(h, _)| h)
}

/// cloudflared's `validateHostname`, in its order: port, wildcard, catch-all position.
pub(crate) fn validate(
    hostname: &str,
    path: &str,
    index: usize,
    total: usize,
) -> Result<(), ErrorKind> {
    if split_host_port(hostname).is_some() {
        return Err(ErrorKind::HostnameContainsPort);
    }
    if hostname.rfind('*').is_some_and(|i| i > 0) {
        return Err(ErrorKind::BadWildcard);
    }
    let catch_all = is_catch_all(hostname, path);
    let last = index + 1 == total;
    if last && !catch_all {
        return Err(ErrorKind::LastRuleNotCatchAll);
    }
    if !last && catch_all {
        return Err(ErrorKind::RuleShouldNotBeCatchAll {
            rule_number: index + 1,
            hostname: hostname.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn is_catch_all(hostname: &str, path: &str) -> bool {
    (hostname.is_empty() || hostname == "*") && path.is_empty()
}

/// cloudflared's `matchHost` (case-insensitive since 2026): exact, or for
/// `*.x` any host ending in `.x` (not `x` itself).
pub(crate) fn match_host(rule: &str, req: &str) -> bool {
    if eq_fold(rule, req) {
        return true;
    }
    match rule.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => ends_with_fold(req, suffix),
        _ => false,
    }
}

/// `a.to_lowercase() == b.to_lowercase()` without allocating (hot path).
fn eq_fold(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// `s.to_lowercase().ends_with(&suffix.to_lowercase())` without allocating.
fn ends_with_fold(s: &str, suffix: &str) -> bool {
    let mut rev = s.chars().rev().flat_map(|c| c.to_lowercase().rev());
    suffix
        .chars()
        .rev()
        .flat_map(|c| c.to_lowercase().rev())
        .all(|c| rev.next() == Some(c))
}

/// The ASCII (punycode) form of an IDN hostname, as Go's `idna.Lookup.ToASCII`
/// gives it (STD3 rules, hyphen checks), when it differs from the original.
/// Wildcards fail STD3, so `*.` hostnames get no alias, like in cloudflared.
pub(crate) fn punycode_alias(hostname: &str) -> Option<String> {
    let ascii = Uts46::new()
        .to_ascii(
            hostname.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Check,
            DnsLength::Ignore,
        )
        .ok()?;
    (ascii != hostname).then(|| ascii.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_like_go() {
        let ok = [
            ("a.com:443", ("a.com", "443")),
            ("a.com:", ("a.com", "")),
            (":80", ("", "80")),
            ("a:b", ("a", "b")),
            ("[::1]:443", ("::1", "443")),
            ("[::1]:", ("::1", "")),
            ("[a.com]:80", ("a.com", "80")),
        ];
        for (s, want) in ok {
            assert_eq!(split_host_port(s), Some(want), "{s}");
        }
        for s in [
            "",
            "a.com",
            "::1",
            "[::1]",
            "[::1]x:80",
            "[::1",
            "a:b:c",
            "a[b]:80",
            "[a]b]:80",
            "a]:80",
            "*",
        ] {
            assert_eq!(split_host_port(s), None, "{s}");
        }
        assert_eq!(strip_port("A.com:8443"), "A.com");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hostname_validation_messages() {
        let v =
            |h: &str, p: &str, i: usize, n: usize| validate(h, p, i, n).map_err(|e| e.to_string());
        assert_eq!(
            v("a.com:443", "", 0, 2),
            Err("Hostname cannot contain a port".into())
        );
        assert_eq!(
            v("[::1]:443", "", 0, 2),
            Err("Hostname cannot contain a port".into())
        );
        assert_eq!(
            v("a.com:", "", 0, 2),
            Err("Hostname cannot contain a port".into())
        );
        // A bare IPv6 address is not host:port in Go.
        assert_eq!(v("::1", "", 0, 2), Ok(()));
        let wildcard = "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\"";
        for h in ["a.*.com", "**", "*.a.*", "a*"] {
            assert_eq!(v(h, "", 0, 2), Err(wildcard.into()), "{h}");
        }
        for h in ["*.a.com", "*a.com", "*"] {
            assert_ne!(v(h, "", 0, 2), Err(wildcard.into()), "{h}");
        }
        let last = "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)";
        assert_eq!(v("a.com", "", 1, 2), Err(last.into()));
        assert_eq!(v("", "/x", 1, 2), Err(last.into()));
        assert_eq!(v("*", "/x", 0, 1), Err(last.into()));
        assert_eq!(v("", "", 1, 2), Ok(()));
        assert_eq!(v("*", "", 0, 1), Ok(()));
        assert_eq!(
            v("", "", 0, 3),
            Err("Rule #1 is matching the hostname '', but this will match every hostname, meaning the rules which follow it will never be triggered.".into())
        );
        assert_eq!(
            v("*", "", 1, 3),
            Err("Rule #2 is matching the hostname '*', but this will match every hostname, meaning the rules which follow it will never be triggered.".into())
        );
        // Not a catch-all when it has a path.
        assert_eq!(v("*", "/api", 0, 2), Ok(()));
        assert_eq!(v("", "/api", 0, 2), Ok(()));
    }

    #[test]
    fn host_matching() {
        assert!(match_host("a.example.com", "A.Example.COM"));
        assert!(match_host("*.example.com", "x.example.com"));
        assert!(match_host("*.example.com", "a.b.EXAMPLE.com"));
        assert!(!match_host("*.example.com", "example.com"));
        assert!(!match_host("*.example.com", "xexample.com"));
        assert!(!match_host("a.example.com", "b.example.com"));
        // `*x` is not a wildcard pattern, only a literal.
        assert!(!match_host("*x.com", "ax.com"));
        assert!(match_host("*x.com", "*x.com"));
        assert!(match_host("*.Example.com", "foo.EXAMPLE.com"));
        assert!(match_host("MyApp.example.com", "myapp.example.com"));
        assert!(match_host("*.İ.com", "x.i̇.com"));
        assert!(!match_host("*.a.com", ".a.co"));
        assert!(!match_host("*.a.com", ""));
    }

    #[test]
    fn punycode() {
        assert_eq!(
            punycode_alias("môô.cloudflare.com").as_deref(),
            Some("xn--m-xgaa.cloudflare.com")
        );
        assert_eq!(punycode_alias("a.com"), None);
        assert_eq!(punycode_alias("*.môô.com"), None);
        assert_eq!(punycode_alias("A.com").as_deref(), Some("a.com"));
        assert_eq!(punycode_alias("-a.com"), None);
    }
}
