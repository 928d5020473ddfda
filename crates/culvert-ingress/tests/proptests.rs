//! Property tests: the parser is total (never panics) on arbitrary JSON and
//! arbitrary strings, and generated valid configurations always validate with
//! a catch-all that matches any request.

use culvert_ingress::{Dialect, Service, parse_config, parse_remote_config};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Keys cloudflared knows, so random objects reach deep code paths.
const KEYS: &[&str] = &[
    "ingress",
    "originRequest",
    "warp-routing",
    "hostname",
    "path",
    "service",
    "connectTimeout",
    "tlsTimeout",
    "tcpKeepAlive",
    "noHappyEyeballs",
    "keepAliveConnections",
    "keepAliveTimeout",
    "httpHostHeader",
    "originServerName",
    "matchSNItoHost",
    "caPool",
    "noTLSVerify",
    "disableChunkedEncoding",
    "bastionMode",
    "proxyAddress",
    "proxyPort",
    "proxyType",
    "ipRules",
    "http2Origin",
    "access",
    "required",
    "teamName",
    "audTag",
    "environment",
    "prefix",
    "ports",
    "allow",
    "enabled",
    "maxActiveFlows",
    "INGRESS",
    "x",
];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::sample::select(
            &[
                "http_status:404",
                "http://localhost:8000",
                "bastion",
                "socks-proxy",
                "hello_world",
                "unix:/tmp/s",
                "*",
                "*.a.com",
                "a.com:80",
                "(",
                "/api/{id}",
                "10.0.0.0/8",
                "30s",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Strings biased towards hostname/path/service syntax.
fn messy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9.*:\\[\\]/%?#@ \\-_{}()|+^$\\\\]{0,24}",
        "(https?|tcp|ssh|unix|unix\\+tls|http_status|ws)(:|://)[a-z0-9.:\\[\\]% ]{0,16}(/[a-z]{0,4})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn never_panics_on_arbitrary_json(v in arb_json(), wrap in any::<bool>()) {
        let v = if wrap { json!({"ingress": [v.clone(), {"service": "http_status:404"}], "originRequest": v}) } else { v };
        for d in [Dialect::Remote, Dialect::Local] {
            if let Ok(ing) = parse_config(&v, d) {
                prop_assert!(!ing.rules.is_empty());
                prop_assert!(ing.catch_all().is_catch_all());
                let _ = ing.find_match("a.example.com:443", "/x");
            }
        }
    }

    #[test]
    fn never_panics_on_arbitrary_rule_strings(
        rules in prop::collection::vec((messy(), messy(), messy()), 1..4),
        host in messy(),
        path in messy(),
    ) {
        let ingress: Vec<Value> = rules
            .iter()
            .map(|(h, p, s)| json!({"hostname": h, "path": p, "service": s}))
            .collect();
        match parse_remote_config(&json!({"ingress": ingress})) {
            Ok(ing) => {
                prop_assert_eq!(ing.rules.len(), rules.len());
                prop_assert!(ing.catch_all().is_catch_all());
                let (i, rule) = ing.find_match(&host, &path);
                prop_assert!(i < ing.rules.len());
                prop_assert!(std::ptr::eq(rule, &ing.rules[i]));
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(e.rule_index().is_none_or(|i| i < rules.len()));
            }
        }
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?"
}

fn hostname() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(label(), 1..3),
        "(com|net|dev|io)",
    )
        .prop_map(|(wild, labels, tld)| {
            let h = format!("{}.{tld}", labels.join("."));
            if wild { format!("*.{h}") } else { h }
        })
}

fn service() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..=65535).prop_map(|p| format!("http://localhost:{p}")),
        (1u16..=65535).prop_map(|p| format!("https://127.0.0.1:{p}")),
        Just("wss://origin.internal".to_owned()),
        (1u16..=65535).prop_map(|p| format!("tcp://db.internal:{p}")),
        Just("ssh://[::1]".to_owned()),
        Just("rdp://10.0.0.5".to_owned()),
        Just("unix:/run/app.sock".to_owned()),
        Just("unix+tls:/run/app.sock".to_owned()),
        (100u16..=999).prop_map(|c| format!("http_status:{c}")),
        Just("hello_world".to_owned()),
        Just("bastion".to_owned()),
    ]
}

fn path() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "/[a-z]{1,8}",
        "\\^/[a-z]{1,8}(/\\.\\*)?",
        "\\.(png|jpg|css)\\$",
        "/api/\\{id\\}",
    ])
}

fn origin_request() -> impl Strategy<Value = Value> {
    (
        prop::option::of(0i64..600),
        prop::option::of(any::<bool>()),
        prop::option::of(0i64..1000),
        prop::option::of("[a-z.]{0,12}"),
    )
        .prop_map(|(timeout, no_verify, conns, host)| {
            let mut m = Map::new();
            if let Some(t) = timeout {
                m.insert("connectTimeout".into(), t.into());
            }
            if let Some(b) = no_verify {
                m.insert("noTLSVerify".into(), b.into());
            }
            if let Some(c) = conns {
                m.insert("keepAliveConnections".into(), c.into());
            }
            if let Some(h) = host {
                m.insert("httpHostHeader".into(), h.into());
            }
            Value::Object(m)
        })
}

fn valid_config() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((hostname(), path(), service(), origin_request()), 0..6),
        prop::option::of(Just("*")),
        service(),
        origin_request(),
    )
        .prop_map(|(rules, star, last_service, defaults)| {
            let mut ingress: Vec<Value> = rules
                .into_iter()
                .map(|(h, p, s, o)| {
                    let mut r = json!({"hostname": h, "service": s, "originRequest": o});
                    if let Some(p) = p {
                        r["path"] = p.into();
                    }
                    r
                })
                .collect();
            let mut last = json!({"service": last_service});
            if let Some(star) = star {
                last["hostname"] = star.into();
            }
            ingress.push(last);
            json!({"ingress": ingress, "originRequest": defaults, "warp-routing": {"enabled": true}})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn generated_valid_configs_validate(cfg in valid_config(), host in any::<String>(), path in any::<String>()) {
        let ing = parse_remote_config(&cfg).map_err(|e| TestCaseError::fail(format!("{e}: {cfg}")))?;
        let n = cfg["ingress"].as_array().map_or(0, Vec::len);
        prop_assert_eq!(ing.rules.len(), n);
        let catch_all = ing.catch_all();
        prop_assert!(catch_all.is_catch_all());
        // The catch-all matches any host and path…
        prop_assert!(catch_all.matches(&host, &path));
        // …so find_match always lands on a rule that matches.
        let (i, rule) = ing.find_match(&host, &path);
        prop_assert!(rule.matches(culvert_ingress::strip_port(&host), &path) || i == n - 1);
        // A host under no rule's domain falls through to the catch-all unless a
        // host-less path rule ("*") catches it, which never happens here.
        let (i, _) = ing.find_match("unmatched.invalid-zzz", "/");
        prop_assert_eq!(i, n - 1);
        // Every http(s) service keeps a usable URL.
        for r in &ing.rules {
            if let Service::Http(u) = &r.service {
                prop_assert!(u.host_str().is_some());
            }
        }
    }

    #[test]
    fn generated_rules_match_their_own_hosts(cfg in valid_config()) {
        let ing = parse_remote_config(&cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, r) in ing.rules.iter().enumerate() {
            let Some(h) = r.hostname.as_deref() else { continue };
            if r.path.is_some() || h == "*" {
                continue;
            }
            let host = h.replacen('*', "sub", 1).to_uppercase();
            let (j, _) = ing.find_match(&format!("{host}:8443"), "/");
            // The first rule for that host wins; it is never later than this one.
            prop_assert!(j <= i, "{} matched {} instead of {}", host, j, i);
        }
    }
}
