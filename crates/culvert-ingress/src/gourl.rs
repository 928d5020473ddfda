//! A Go-compatible `net/url.Parse`.
//!
//! cloudflared validates an ingress `service` with Go's `url.Parse` and the REST
//! API returns Go's error text to the client (e.g.
//! `parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host`), so this
//! module reproduces Go's parsing decisions and messages rather than relying on
//! the WHATWG parser of the `url` crate, which accepts and rejects different
//! inputs. It follows Go's classic (pre-1.26) rules: the port is what follows the
//! *last* colon of the host, and a bracketed host is not checked to be an IPv6
//! address.

use crate::gotext::{quote, quote_bytes};

/// The parts of a URL as Go's `net/url.URL` holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoUrl {
    /// Lower-cased scheme, empty if none.
    pub scheme: String,
    /// Opaque part of e.g. `mailto:x` or `localhost:8000` (scheme `localhost`).
    pub opaque: String,
    /// Decoded `user[:password]`, if the authority had a userinfo.
    pub user: Option<String>,
    /// Host with optional `:port`, decoded (`[v6]:port` keeps its brackets).
    pub host: String,
    /// Decoded path.
    pub path: String,
    /// Query without the `?`, not decoded.
    pub raw_query: String,
    /// Decoded fragment.
    pub fragment: String,
}

impl GoUrl {
    /// Go's `URL.Hostname()`: the host without port and without IPv6 brackets.
    pub fn hostname(&self) -> &str {
        split_host_port(&self.host).0
    }

    /// Go's `URL.Port()`: the digits after the last colon, or empty.
    pub fn port(&self) -> &str {
        split_host_port(&self.host).1
    }
}

/// Error of [`parse`]; displays exactly like Go's `*url.Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse {}: {detail}", quote(.url))]
pub struct GoUrlError {
    /// The (possibly fragment-less) URL Go names in the message.
    pub url: String,
    /// Go's inner error text, e.g. `invalid port ":2333 " after host`.
    pub detail: String,
}

/// Go's `net/url.Parse`.
pub fn parse(raw: &str) -> Result<GoUrl, GoUrlError> {
    let (without_frag, frag) = match raw.find('#') {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, ""),
    };
    let mut url = parse_inner(without_frag).map_err(|detail| GoUrlError {
        url: without_frag.to_owned(),
        detail,
    })?;
    if !frag.is_empty() {
        // Go names the whole input (fragment included) when the fragment is bad.
        url.fragment = unescape(frag, Mode::Fragment).map_err(|detail| GoUrlError {
            url: raw.to_owned(),
            detail,
        })?;
    }
    Ok(url)
}

fn parse_inner(raw: &str) -> Result<GoUrl, String> {
    if raw.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err("net/url: invalid control character in URL".to_owned());
    }
    let mut url = GoUrl::default();
    if raw == "*" {
        url.path = "*".to_owned();
        return Ok(url);
    }
    let (scheme, mut rest) = get_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();

    if rest.ends_with('?') && rest.bytes().filter(|&b| b == b'?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some(i) = rest.find('?') {
        url.raw_query = rest[i + 1..].to_owned();
        rest = &rest[..i];
    }

    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            // A rootless path after a scheme is opaque (RFC 3986).
            url.opaque = rest.to_owned();
            return Ok(url);
        }
        // Avoids confusing "host:port" without a scheme with a relative path.
        let segment = rest.split('/').next().unwrap_or("");
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".to_owned());
        }
    }

    if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let (user, host) = parse_authority(authority)?;
        url.user = user;
        url.host = host;
        rest = path;
    }
    url.path = unescape(rest, Mode::Path)?;
    Ok(url)
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".to_owned());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_authority(authority: &str) -> Result<(Option<String>, String), String> {
    let at = authority.rfind('@');
    let host = parse_host(match at {
        Some(i) => &authority[i + 1..],
        None => authority,
    })?;
    let Some(i) = at else {
        return Ok((None, host));
    };
    let userinfo = &authority[..i];
    if !valid_userinfo(userinfo) {
        return Err("net/url: invalid userinfo".to_owned());
    }
    let user = match userinfo.split_once(':') {
        None => unescape(userinfo, Mode::UserPassword)?,
        Some((name, password)) => {
            let name = unescape(name, Mode::UserPassword)?;
            let password = unescape(password, Mode::UserPassword)?;
            format!("{name}:{password}")
        }
    };
    Ok((Some(user), host))
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".to_owned());
        };
        let colon_port = &host[i + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {} after host", quote(colon_port)));
        }
        // RFC 6874: "%25" introduces a zone, which may use any escaping.
        if let Some(zone) = host[..i].find("%25") {
            let h1 = unescape(&host[..zone], Mode::Host)?;
            let h2 = unescape(&host[zone..i], Mode::Zone)?;
            let h3 = unescape(&host[i..], Mode::Host)?;
            return Ok(format!("{h1}{h2}{h3}"));
        }
    } else if let Some(i) = host.rfind(':') {
        let colon_port = &host[i..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {} after host", quote(colon_port)));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn valid_userinfo(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    })
}

/// Go's `splitHostPort` used by `URL.Hostname`/`URL.Port` (never fails).
fn split_host_port(host_port: &str) -> (&str, &str) {
    let mut host = host_port;
    let mut port = "";
    if let Some(colon) = host.rfind(':')
        && valid_optional_port(&host[colon..])
    {
        port = &host[colon + 1..];
        host = &host[..colon];
    }
    if host.len() >= 2 && host.starts_with('[') && host.ends_with(']') {
        host = &host[1..host.len() - 1];
    }
    (host, port)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    Fragment,
}

/// Go's `unescape`: validates `%XX` escapes and, for hosts, the allowed bytes.
fn unescape(s: &str, mode: Mode) -> Result<String, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut any_escape = false;
    while i < b.len() {
        match b[i] {
            b'%' => {
                any_escape = true;
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    let end = (i + 3).min(b.len());
                    return Err(escape_error(&b[i..end]));
                }
                let v = (unhex(b[i + 1]) << 4) | unhex(b[i + 2]);
                let is_pct25 = &b[i..i + 3] == b"%25";
                // In a host, %-escapes may only encode non-ASCII bytes (RFC 3986),
                // except %25 which RFC 6874 allows for zones.
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && !is_pct25 {
                    return Err(escape_error(&b[i..i + 3]));
                }
                if mode == Mode::Zone && !is_pct25 && v != b' ' && should_escape_host(v) {
                    return Err(escape_error(&b[i..i + 3]));
                }
                i += 3;
            }
            c => {
                if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && should_escape_host(c) {
                    // `c` is ASCII, so this slice is a whole character.
                    return Err(format!(
                        "invalid character {} in host name",
                        quote(&s[i..i + 1])
                    ));
                }
                i += 1;
            }
        }
    }
    if !any_escape {
        return Ok(s.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push((unhex(b[i + 1]) << 4) | unhex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Go strings may hold invalid UTF-8 after decoding; Rust's cannot.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn escape_error(bytes: &[u8]) -> String {
    // The 3-byte window may split a UTF-8 character; Go quotes the raw bytes.
    format!("invalid URL escape {}", quote_bytes(bytes))
}

fn unhex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Go's `shouldEscape(c, encodeHost)`.
fn should_escape_host(c: u8) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    !matches!(
        c,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'['
            | b']'
            | b'<'
            | b'>'
            | b'"'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(raw: &str) -> String {
        parse(raw).expect_err(raw).to_string()
    }

    #[test]
    fn go_error_messages() {
        let cases = [
            (
                "http://127.0.0.1:2333 ",
                r#"parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host"#,
            ),
            (
                "http://localhost:80a",
                r#"parse "http://localhost:80a": invalid port ":80a" after host"#,
            ),
            (
                "https://local host:8000",
                r#"parse "https://local host:8000": invalid character " " in host name"#,
            ),
            (
                "http://exa{mple.com",
                r#"parse "http://exa{mple.com": invalid character "{" in host name"#,
            ),
            (":8080", r#"parse ":8080": missing protocol scheme"#),
            (
                "127.0.0.1:8080",
                r#"parse "127.0.0.1:8080": first path segment in URL cannot contain colon"#,
            ),
            (
                "http://localhost\n",
                r#"parse "http://localhost\n": net/url: invalid control character in URL"#,
            ),
            (
                "http://a\u{7f}b",
                r#"parse "http://a\x7fb": net/url: invalid control character in URL"#,
            ),
            (
                "http://[::1:80",
                r#"parse "http://[::1:80": missing ']' in host"#,
            ),
            (
                "http://[::1]x",
                r#"parse "http://[::1]x": invalid port "x" after host"#,
            ),
            (
                "http://%41.com",
                r#"parse "http://%41.com": invalid URL escape "%41""#,
            ),
            (
                "http://host/%zz",
                r#"parse "http://host/%zz": invalid URL escape "%zz""#,
            ),
            (
                "http://host/a%2",
                r#"parse "http://host/a%2": invalid URL escape "%2""#,
            ),
            (
                "http://us er@host",
                r#"parse "http://us er@host": net/url: invalid userinfo"#,
            ),
            (
                "http://host/%日",
                r#"parse "http://host/%日": invalid URL escape "%\xe6\x97""#,
            ),
            (
                "http://host#%zz",
                r#"parse "http://host#%zz": invalid URL escape "%zz""#,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn fragment_error_names_url_without_fragment_for_earlier_errors() {
        assert_eq!(
            err("http://a b#frag"),
            r#"parse "http://a b": invalid character " " in host name"#
        );
    }

    #[test]
    fn successful_parses_match_go() {
        let u = parse("http://127.0.0.1:2333").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.path.as_str()),
            ("http", "127.0.0.1:2333", "")
        );
        assert_eq!((u.hostname(), u.port()), ("127.0.0.1", "2333"));

        let u = parse("HTTPS://user:p%40ss@Example.COM:8443/a%20b?q=1#frag").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.user.as_deref(), Some("user:p@ss"));
        assert_eq!(u.host, "Example.COM:8443");
        assert_eq!(u.path, "/a b");
        assert_eq!(u.raw_query, "q=1");
        assert_eq!(u.fragment, "frag");

        let u = parse("tcp://[::1]:22").unwrap();
        assert_eq!((u.hostname(), u.port()), ("::1", "22"));
        let u = parse("tcp://[fe80::1%25en0]:22").unwrap();
        assert_eq!(u.host, "[fe80::1%en0]:22");

        // "localhost:8000" has scheme "localhost" and an opaque part.
        let u = parse("localhost:8000").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.opaque.as_str(), u.host.as_str()),
            ("localhost", "8000", "")
        );

        // Go accepts any digits as a port and only checks the last colon.
        assert_eq!(parse("http://a:99999").unwrap().port(), "99999");
        assert_eq!(parse("http://a:80:80").unwrap().hostname(), "a:80");
        assert_eq!(parse("http://a:").unwrap().port(), "");
        assert_eq!(parse("http://:80").unwrap().hostname(), "");

        assert_eq!(parse("http://host/").unwrap().path, "/");
        assert_eq!(parse("http://host?").unwrap().path, "");
        assert_eq!(parse("http://host#a\nb").unwrap().fragment, "a\nb");
        assert_eq!(parse("*").unwrap().path, "*");
        assert_eq!(parse("").unwrap(), GoUrl::default());
        assert_eq!(parse("///x").unwrap().path, "///x");
        assert_eq!(parse("//h:1/x").unwrap().host, "h:1");
        assert_eq!(parse("http://môô.com").unwrap().hostname(), "môô.com");
        assert_eq!(parse("http://%C3%A9.com").unwrap().hostname(), "é.com");
        assert_eq!(
            parse("1http://x/y").map_err(|e| e.detail),
            Err("first path segment in URL cannot contain colon".into())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Fuzz-style: arbitrary input, biased towards URL syntax, must never
        // panic, and successful results must respect Go's structural invariants.
        #[test]
        fn parse_never_panics(raw in prop_oneof![
            any::<String>(),
            proptest::string::string_regex("[a-zA-Z0-9:/@\\[\\]%?#. \\-+_~!$&'()*,;=<>\"{}|\\\\^`\u{0}-\u{1f}\u{7f}é]{0,40}").unwrap(),
            proptest::string::string_regex("(https?|tcp|ssh|unix|)(:|://)[a-z0-9.:\\[\\]%@ ]{0,20}(/[a-z%0-9]{0,5})?([?#][a-z=%]{0,5})?").unwrap(),
        ]) {
            match parse(&raw) {
                Ok(u) => {
                    prop_assert!(!raw.split('#').next().unwrap_or("").bytes().any(|b| b < 0x20 || b == 0x7f));
                    prop_assert!(u.scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)));
                    prop_assert!(!u.host.contains('/') && !u.host.contains('?') && !u.host.contains('#'));
                    prop_assert!(u.host.is_empty() || u.opaque.is_empty());
                    prop_assert!(u.port().bytes().all(|b| b.is_ascii_digit()));
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("parse \""), "{}", msg);
                    prop_assert!(!e.detail.is_empty());
                }
            }
        }
    }
}
