//! Host → tunnel resolution for the public listener (pure logic).
//!
//! A request's host reaches a tunnel, in this order:
//! 1. `<tunnel-uuid>.<tunnel-domain>` always names its tunnel;
//! 2. an exact DNS route stored by the API (looked up by the caller);
//! 3. a hostname from a remotely managed tunnel's ingress rules, kept in a
//!    [`HostIndex`] (`*.example.com` covers every subdomain).
//!
//! Nothing else matches: an unknown host gets error 1033.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

/// The host part of a `Host` header or URI authority, lowercase, without
/// port and trailing dot. `None` for an empty or malformed value.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: "[::1]" or "[::1]:8080".
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inner
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') => {
                if !is_port(port) {
                    return None;
                }
                h
            }
            Some(_) => return None, // bare IPv6 without brackets
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The tunnel named by `<uuid>.<tunnel_domain>` (host already normalised).
pub fn tunnel_of_tunnel_domain(host: &str, tunnel_domain: &str) -> Option<Uuid> {
    let label = host
        .strip_suffix(tunnel_domain.trim_end_matches('.'))?
        .strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    Uuid::try_parse(label).ok()
}

/// The hostnames claimed by a remote configuration's ingress rules,
/// normalised. The catch-all `*` and patterns with `*` anywhere but a
/// leading `*.` are skipped: they would capture hosts that belong to no one.
pub fn ingress_hostnames(config: &serde_json::Value) -> Vec<String> {
    let Some(rules) = config.get("ingress").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rule in rules {
        let Some(h) = rule.get("hostname").and_then(|v| v.as_str()) else {
            continue;
        };
        let (wild, rest) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h),
        };
        if rest.contains('*') {
            continue;
        }
        if let Some(n) = normalize_host(rest) {
            let name = if wild { format!("*.{n}") } else { n };
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Ingress hostnames of remotely managed tunnels → tunnel. When several
/// tunnels claim a name, the lowest tunnel id wins (deterministic); an exact
/// name beats a wildcard, and a longer wildcard suffix beats a shorter one.
#[derive(Debug, Default)]
pub struct HostIndex {
    by_tunnel: HashMap<Uuid, Vec<String>>,
    exact: HashMap<String, BTreeSet<Uuid>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, BTreeSet<Uuid>>,
}

impl HostIndex {
    /// Replaces the names a tunnel claims (an empty list removes it).
    pub fn set_tunnel(&mut self, tunnel: Uuid, hostnames: Vec<String>) {
        self.remove_tunnel(tunnel);
        for h in &hostnames {
            let (map, key) = match h.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix),
                None => (&mut self.exact, h.as_str()),
            };
            map.entry(key.to_owned()).or_default().insert(tunnel);
        }
        if !hostnames.is_empty() {
            self.by_tunnel.insert(tunnel, hostnames);
        }
    }

    pub fn remove_tunnel(&mut self, tunnel: Uuid) {
        let Some(old) = self.by_tunnel.remove(&tunnel) else {
            return;
        };
        for h in old {
            let (map, key) = match h.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
                None => (&mut self.exact, h),
            };
            if let Some(set) = map.get_mut(&key) {
                set.remove(&tunnel);
                if set.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }

    /// The tunnel for a normalised host.
    pub fn lookup(&self, host: &str) -> Option<Uuid> {
        if let Some(t) = self.exact.get(host).and_then(|s| s.first()) {
            return Some(*t);
        }
        // `*.example.com` matches `a.example.com` and `a.b.example.com`
        // (as cloudflared's ingress does) but not `example.com`.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(t) = self.wildcard.get(suffix).and_then(|s| s.first()) {
                return Some(*t);
            }
            rest = suffix;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.by_tunnel.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tunnel.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize() {
        for (raw, want) in [
            ("App.Test", Some("app.test")),
            ("app.test:8080", Some("app.test")),
            ("app.test.", Some("app.test")),
            ("[::1]:80", Some("::1")),
            ("[::1]", Some("::1")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("", None),
            ("a b", None),
            ("app.test:", None),
            ("app.test:http", None),
            ("::1", None),
            ("[::1", None),
            ("evil/x", None),
        ] {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn tunnel_domain() {
        let id = Uuid::from_u128(0x5f3b7c1e_8a2d_4e6f_9b1c_2d3e4f5a6b7c);
        let d = "cfargotunnel.localhost";
        assert_eq!(tunnel_of_tunnel_domain(&format!("{id}.{d}"), d), Some(id));
        assert_eq!(tunnel_of_tunnel_domain(d, d), None);
        assert_eq!(tunnel_of_tunnel_domain(&format!("x.{id}.{d}"), d), None);
        assert_eq!(
            tunnel_of_tunnel_domain("nope.cfargotunnel.localhost", d),
            None
        );
        assert_eq!(tunnel_of_tunnel_domain(&format!("{id}x{d}"), d), None);
    }

    #[test]
    fn hostnames_from_config() {
        let cfg = json!({"ingress": [
            {"hostname": "App.Example.com", "service": "http://a"},
            {"hostname": "*.wild.example.com", "service": "http://b"},
            {"hostname": "app.example.com", "path": "/x", "service": "http://c"},
            {"hostname": "*", "service": "http://d"},
            {"hostname": "a*.example.com", "service": "http://e"},
            {"service": "http_status:404"}
        ]});
        assert_eq!(
            ingress_hostnames(&cfg),
            vec!["app.example.com", "*.wild.example.com"]
        );
        assert!(ingress_hostnames(&json!({})).is_empty());
        assert!(ingress_hostnames(&json!({"ingress": "x"})).is_empty());
    }

    #[test]
    fn index_lookup_and_replace() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut idx = HostIndex::default();
        idx.set_tunnel(b, vec!["app.test".into(), "*.example.com".into()]);
        idx.set_tunnel(a, vec!["app.test".into(), "*.deep.example.com".into()]);
        assert_eq!(idx.lookup("app.test"), Some(a), "lowest id wins");
        assert_eq!(idx.lookup("x.example.com"), Some(b));
        assert_eq!(idx.lookup("x.y.example.com"), Some(b));
        assert_eq!(idx.lookup("x.deep.example.com"), Some(a), "longest suffix");
        assert_eq!(idx.lookup("example.com"), None);
        assert_eq!(idx.lookup("other.test"), None);
        idx.set_tunnel(a, vec![]);
        assert_eq!(idx.lookup("app.test"), Some(b));
        assert_eq!(idx.lookup("x.deep.example.com"), Some(b));
        idx.remove_tunnel(b);
        assert!(idx.is_empty());
        assert_eq!(idx.lookup("app.test"), None);
    }
}
