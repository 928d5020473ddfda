//! End-to-end tests of `parse_*_config` and `find_match`: every cloudflared
//! message through the public entry point, and table tests of matching.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

fn parse(v: Value) -> Result<Ingress, ValidationError> {
    parse_remote_config(&v)
}

fn msg(v: Value) -> String {
    match parse(v) {
        Ok(_) => panic!("expected a validation error"),
        Err(e) => e.to_string(),
    }
}

/// One rule followed by a valid catch-all.
fn with_catch_all(rule: Value) -> Value {
    json!({"ingress": [rule, {"service": "http_status:404"}]})
}

#[test]
fn spec_examples_validate() {
    // api.md §8.2 fixture.
    let v = json!({"warp-routing":{"enabled":true},"originRequest":{"connectTimeout":10},
        "ingress":[{"hostname":"test.example.com","service":"https://localhost:8000",
        "originRequest":{"noTLSVerify":true}},{"service":"http_status:404"}]});
    let ing = parse(v).unwrap();
    assert_eq!(ing.rules.len(), 2);
    assert_eq!(
        ing.origin_request.connect_timeout(),
        Duration::from_secs(10)
    );
    assert_eq!(ing.warp_routing.enabled, Some(true));
    let r0 = &ing.rules[0];
    assert_eq!(r0.hostname.as_deref(), Some("test.example.com"));
    assert!(r0.origin_request.no_tls_verify());
    assert_eq!(r0.origin_request.connect_timeout(), Duration::from_secs(10));
    assert_eq!(r0.raw_origin_request.connect_timeout, None);
    assert_eq!(ing.rules[1].service, Service::HttpStatus(404));
    assert!(ing.catch_all().is_catch_all());

    // sdk-clients.md "Configuration body".
    let v = json!({
      "ingress": [
        {"hostname": "app.example.com", "service": "http://localhost:8000", "path": "/api",
         "originRequest": {"noTLSVerify": true, "connectTimeout": 10, "httpHostHeader": "x",
                           "access": {"audTag": ["aud"], "teamName": "team", "required": true}}},
        {"service": "http_status:404"}],
      "originRequest": {"keepAliveTimeout": 90, "matchSNItoHost": true, "noHappyEyeballs": false,
                        "http2Origin": true, "disableChunkedEncoding": true, "caPool": "/p",
                        "originServerName": "o", "proxyType": "", "tcpKeepAlive": 30,
                        "tlsTimeout": 10, "keepAliveConnections": 100}});
    let ing = parse(v).unwrap();
    let r0 = &ing.rules[0];
    assert_eq!(r0.path.as_ref().map(PathPattern::as_str), Some("/api"));
    assert_eq!(
        r0.required_access().map(|a| a.team_name.as_str()),
        Some("team")
    );
    assert!(r0.origin_request.http2_origin() && r0.origin_request.match_sni_to_host());
    assert_eq!(r0.origin_request.http_host_header(), "x");

    // edge-protocol.md §3.5 push example (extra top-level keys ignored).
    let v = json!({"__configuration_flags":{"metrics":"127.0.0.1:0"},"ingress":[{"hostname":"app.example.com",
        "service":"http://127.0.0.1:18080","originRequest":{"connectTimeout":5}},
        {"service":"http_status:404","originRequest":{}}],"warp-routing":{"enabled":true}});
    assert!(parse(v).is_ok());

    // Terraform v4's "cleared" config.
    let v = json!({"ingress":[{"service":"http_status:404"}],"warp-routing":{"enabled":false}});
    assert!(parse(v).is_ok());
}

#[test]
fn rule_set_structure_messages() {
    assert_eq!(
        msg(json!({"ingress": []})),
        "The config file doesn't contain any ingress rules"
    );
    assert_eq!(
        msg(json!({})),
        "The config file doesn't contain any ingress rules"
    );
    assert_eq!(
        msg(Value::Null),
        "The config file doesn't contain any ingress rules"
    );
    let last = "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)";
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "a.com", "service": "http://x"}]})),
        last
    );
    assert_eq!(
        msg(json!({"ingress": [{"path": "/x", "service": "http://x"}]})),
        last
    );
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "*", "path": "^/$", "service": "http://x"}]})),
        last
    );
    assert_eq!(
        msg(
            json!({"ingress": [{"service": "http://a"}, {"hostname": "b.com", "service": "http://b"}]})
        ),
        "Rule #1 is matching the hostname '', but this will match every hostname, meaning the rules which follow it will never be triggered."
    );
    assert_eq!(
        msg(
            json!({"ingress": [{"hostname": "a.com", "service": "http://a"},
            {"hostname": "*", "service": "http://b"}, {"service": "http_status:404"}]})
        ),
        "Rule #2 is matching the hostname '*', but this will match every hostname, meaning the rules which follow it will never be triggered."
    );
    assert_eq!(
        msg(with_catch_all(
            json!({"hostname": "test.example.com:443", "service": "https://localhost:8000"})
        )),
        "Hostname cannot contain a port"
    );
    assert_eq!(
        msg(with_catch_all(
            json!({"hostname": "test.*.example.com", "service": "https://localhost:8000"})
        )),
        "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
    );
    assert_eq!(
        msg(with_catch_all(
            json!({"hostname": "example.com", "path": "*/subpath2", "service": "https://localhost:8000"})
        )),
        "Rule #1 has an invalid regex: error parsing regexp: missing argument to repetition operator: `*`"
    );
    assert_eq!(
        msg(
            json!({"ingress": [{"hostname": "a.com", "service": "http://a"},
            {"hostname": "b.com", "path": "(", "service": "http://b"}, {"service": "http_status:404"}]})
        ),
        "Rule #2 has an invalid regex: error parsing regexp: missing closing ): `(`"
    );
}

#[test]
fn service_messages_through_the_api() {
    let cases = [
        (
            "http://127.0.0.1:2333 ",
            r#"parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host"#,
        ),
        (
            "https://local host:8000",
            r#"parse "https://local host:8000": invalid character " " in host name"#,
        ),
        (
            "localhost:8000",
            "localhost:8000 is an invalid address, please make sure it has a scheme and a hostname",
        ),
        (
            "https://localhost:8000/static/",
            "https://localhost:8000/static/ is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path",
        ),
        (
            "http_status:asdf",
            r#"invalid HTTP status code: strconv.Atoi: parsing "asdf": invalid syntax"#,
        ),
        ("http_status:8080", "invalid HTTP status code: 8080"),
    ];
    for (service, want) in cases {
        assert_eq!(
            msg(json!({"ingress": [{"service": service}]})),
            want,
            "{service}"
        );
        assert_eq!(
            msg(with_catch_all(
                json!({"hostname": "a.com", "service": service})
            )),
            want,
            "{service}"
        );
    }
    // A missing service is an empty URL.
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "a.com"}, {"service": "http_status:404"}]})),
        " is an invalid address, please make sure it has a scheme and a hostname"
    );
    assert_eq!(
        msg(json!({"ingress": [null]})),
        " is an invalid address, please make sure it has a scheme and a hostname"
    );
}

#[test]
fn validation_order_within_and_across_rules() {
    // The service is checked before the hostname of the same rule…
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "a.com:80", "service": "http_status:1"}]})),
        "invalid HTTP status code: 1"
    );
    // …then access, then hostname, then path.
    assert_eq!(
        msg(
            json!({"ingress": [{"hostname": "a.com:80", "path": "(", "service": "http://x",
            "originRequest": {"access": {"required": true, "audTag": ["x"]}}}]})
        ),
        "access.TeamName cannot be blank when access.audTags are present"
    );
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "a.com:80", "path": "(", "service": "http://x"}]})),
        "Hostname cannot contain a port"
    );
    assert_eq!(
        msg(json!({"ingress": [{"hostname": "a.com", "path": "(", "service": "http://x"}]})),
        "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
    );
    // Earlier rules fail first.
    let e = parse(
        json!({"ingress": [{"hostname": "a.com", "service": "http://a"},
        {"hostname": "b.com:1", "service": "http://b"}, {"service": "bad"}]}),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "Hostname cannot contain a port");
    assert_eq!(e.rule_index(), Some(1));
    assert_eq!(e.kind(), &ErrorKind::HostnameContainsPort);
    // Type errors win over everything.
    assert_eq!(
        msg(
            json!({"ingress": [{"service": "bad"}, {"service": "x", "originRequest": {"noTLSVerify": "yes"}}]})
        ),
        r#"ingress[1].originRequest.noTLSVerify: expected a boolean, got string "yes""#
    );
    assert_eq!(
        parse(json!({"ingress": "x"})).unwrap_err().rule_index(),
        None
    );
}

#[test]
fn access_validation() {
    let blank = "access.TeamName cannot be blank when access.audTags are present";
    let rule = |access: Value| {
        with_catch_all(
            json!({"hostname": "a.com", "service": "http://x", "originRequest": {"access": access}}),
        )
    };
    assert_eq!(msg(rule(json!({"required": true, "audTag": ["a"]}))), blank);
    assert_eq!(
        msg(rule(
            json!({"required": true, "audTag": ["a"], "teamName": ""})
        )),
        blank
    );
    assert!(
        parse(rule(
            json!({"required": true, "audTag": ["a"], "teamName": "t"})
        ))
        .is_ok()
    );
    assert!(parse(rule(json!({"required": true}))).is_ok());
    assert!(parse(rule(json!({"required": true, "audTag": []}))).is_ok());
    assert!(parse(rule(json!({"required": false, "audTag": ["a"]}))).is_ok());
    assert!(parse(rule(json!({"audTag": ["a"]}))).is_ok());
    // Only the rule's own access is checked, not the top-level default.
    let v = json!({"originRequest": {"access": {"required": true, "audTag": ["a"]}},
                   "ingress": [{"service": "http_status:404"}]});
    let ing = parse(v).unwrap();
    assert!(ing.rules[0].origin_request.access().is_some());
    assert!(ing.rules[0].required_access().is_none());
}

#[test]
fn socks_proxy_and_bastion() {
    let v = with_catch_all(
        json!({"hostname": "socks.foo.com", "service": "socks-proxy",
        "originRequest": {"ipRules": [{"prefix": "1.1.1.0/24", "ports": [80, 443], "allow": true},
                                      {"prefix": "0.0.0.0/0", "allow": false}]}}),
    );
    let ing = parse(v).unwrap();
    let r = &ing.rules[0];
    assert_eq!(r.service, Service::SocksProxy);
    assert!(r.socks_policy.allowed("1.1.1.1".parse().unwrap(), 443));
    assert!(!r.socks_policy.allowed("1.1.1.1".parse().unwrap(), 22));
    assert!(!r.socks_policy.allowed("9.9.9.9".parse().unwrap(), 443));
    assert_eq!(
        msg(with_catch_all(
            json!({"hostname": "s.com", "service": "socks-proxy",
            "originRequest": {"ipRules": [{"prefix": "1.1.1.0/33"}]}})
        )),
        "unable to create ip rule for socks-proxy: unable to parse cidr: 1.1.1.0/33"
    );
    // Invalid top-level ipRules are ignored by cloudflared, and a socks-proxy
    // rule only uses its own rules (none here: deny everything).
    let v = json!({"originRequest": {"ipRules": [{"prefix": "nope"}]},
        "ingress": [{"hostname": "s.com", "service": "socks-proxy"}, {"service": "http_status:404"}]});
    let ing = parse(v).unwrap();
    assert!(ing.rules[0].socks_policy.rules.is_empty());
    assert_eq!(ing.rules[0].origin_request.ip_rules().len(), 1);
    // Invalid ipRules on a non-socks rule are ignored too.
    assert!(
        parse(with_catch_all(
            json!({"hostname": "a.com", "service": "http://x",
        "originRequest": {"ipRules": [{"prefix": "nope"}]}})
        ))
        .is_ok()
    );

    // bastion, by name or by bastionMode (which skips URL validation).
    let v = json!({"ingress": [{"hostname": "bastion.foo.com", "originRequest": {"bastionMode": true}},
        {"hostname": "b2.foo.com", "service": "bastion"}, {"service": "http_status:404"}]});
    let ing = parse(v).unwrap();
    for r in &ing.rules[..2] {
        assert_eq!(r.service, Service::Bastion);
        assert!(r.origin_request.bastion_mode());
    }
    // A top-level bastionMode applies to every URL-like rule but not to http_status.
    let v = json!({"originRequest": {"bastionMode": true},
        "ingress": [{"hostname": "a.com", "service": "whatever"}, {"service": "http_status:404"}]});
    let ing = parse(v).unwrap();
    assert_eq!(ing.rules[0].service, Service::Bastion);
    assert_eq!(ing.rules[1].service, Service::HttpStatus(404));
}

#[test]
fn origin_request_merge_and_defaults() {
    let v = json!({"originRequest": {"connectTimeout": 10, "noTLSVerify": true, "httpHostHeader": "h"},
        "ingress": [{"hostname": "a.com", "service": "http://x", "originRequest": {"connectTimeout": 3, "noTLSVerify": false}},
                    {"service": "http_status:404"}]});
    let ing = parse(v).unwrap();
    let a = &ing.rules[0].origin_request;
    assert_eq!(a.connect_timeout(), Duration::from_secs(3));
    assert!(!a.no_tls_verify());
    assert_eq!(a.http_host_header(), "h");
    assert_eq!(a.tls_timeout(), Duration::from_secs(10));
    assert_eq!(a.keep_alive_connections(), 100);
    let c = &ing.rules[1].origin_request;
    assert_eq!(c.connect_timeout(), Duration::from_secs(10));
    assert!(c.no_tls_verify());
    assert_eq!(
        ing.origin_request.connect_timeout,
        GoDuration::from_secs(10)
    );
}

#[test]
fn remote_rejects_duration_strings_local_accepts_them() {
    let v = json!({"originRequest": {"connectTimeout": "30s"}, "ingress": [{"service": "http_status:404"}]});
    assert_eq!(
        parse_remote_config(&v).unwrap_err().to_string(),
        r#"originRequest.connectTimeout: expected an integer number of seconds, got string "30s""#
    );
    let ing = parse_local_config(&v).unwrap();
    assert_eq!(
        ing.origin_request.connect_timeout(),
        Duration::from_secs(30)
    );
    let v = json!({"originRequest": {"connectTimeout": "abc"}, "ingress": [{"service": "http_status:404"}]});
    assert_eq!(
        parse_local_config(&v).unwrap_err().to_string(),
        r#"originRequest.connectTimeout: time: invalid duration "abc""#
    );
}

#[test]
fn punycode_hostnames_match() {
    let v = json!({"ingress": [{"hostname": "môô.cloudflare.com", "service": "https://localhost:8000"},
        {"service": "https://localhost:8001"}]});
    let ing = parse(v).unwrap();
    assert_eq!(
        ing.rules[0].punycode_hostname.as_deref(),
        Some("xn--m-xgaa.cloudflare.com")
    );
    assert_eq!(ing.find_match("xn--m-xgaa.cloudflare.com", "/").0, 0);
    assert_eq!(ing.find_match("môô.cloudflare.com", "/").0, 0);
    assert_eq!(ing.find_match("MÔÔ.cloudflare.com", "/").0, 0);
    assert_eq!(ing.find_match("moo.cloudflare.com", "/").0, 1);
}

#[test]
fn find_match_table() {
    let ing = parse(json!({"ingress": [
        {"hostname": "tunnel-a.example.com", "service": "http://a"},
        {"hostname": "tunnel-b.example.com", "path": "/health", "service": "http://b"},
        {"hostname": "*.wild.example.com", "service": "http://c"},
        {"hostname": "*", "path": "^/static/", "service": "http://d"},
        {"path": "\\.(jpg|png)$", "service": "http://e"},
        {"hostname": "::1", "service": "http://f"},
        {"hostname": "MiXeD.Example.com", "service": "http://g"},
        {"service": "http_status:404"}
    ]}))
    .unwrap();
    let table = [
        // exact, case-insensitive, port ignored
        ("tunnel-a.example.com", "/", 0),
        ("tunnel-a.example.com", "/pages/about", 0),
        ("tunnel-a.example.com:443", "/pages/about", 0),
        ("Tunnel-A.example.com", "/", 0),
        ("TUNNEL-A.EXAMPLE.COM:8080", "/", 0),
        ("mixed.example.com", "/", 6),
        ("MIXED.EXAMPLE.COM", "/", 6),
        // path regexes are unanchored
        ("tunnel-b.example.com", "/health", 1),
        ("tunnel-b.example.com", "/api/health/deep", 1),
        ("tunnel-b.example.com", "/index.html", 7),
        // wildcards: subdomains only, any depth, not the apex
        ("x.wild.example.com", "/", 2),
        ("a.b.wild.example.com", "/", 2),
        ("Foo.Wild.Example.com", "/", 2),
        ("wild.example.com", "/", 7),
        ("xwild.example.com", "/", 7),
        // "*" with a path, and a hostname-less path rule
        ("anything.net", "/static/app.js", 3),
        ("anything.net", "/a/static/", 7),
        ("anything.net", "/img/logo.png", 4),
        ("tunnel-a.example.com", "/img/logo.png", 0),
        // IPv6 host with and without port
        ("[::1]:443", "/", 5),
        ("::1", "/", 5),
        // catch-all
        ("tunnel-c.example.com", "/", 7),
        ("", "", 7),
        ("tunnel-a.example.com.", "/", 7),
    ];
    for (host, path, want) in table {
        let (i, rule) = ing.find_match(host, path);
        assert_eq!(i, want, "host={host:?} path={path:?}");
        assert!(std::ptr::eq(rule, &ing.rules[want]));
    }
}

#[test]
fn catch_all_forms() {
    for last in [
        json!({"service": "http_status:404"}),
        json!({"hostname": "*", "service": "http_status:404"}),
        json!({"hostname": "", "path": "", "service": "http_status:404"}),
    ] {
        let ing = parse(json!({"ingress": [{"hostname": "a.com", "service": "http://a"}, last]}))
            .unwrap();
        assert!(ing.catch_all().is_catch_all());
        assert_eq!(ing.find_match("zzz", "/x").0, 1);
    }
}

#[test]
fn default_and_empty_ingress_do_not_panic() {
    let d = Ingress::default_no_rules();
    assert_eq!(d.find_match("a", "/").1.service, Service::HttpStatus(503));
    let empty = Ingress {
        rules: vec![],
        origin_request: OriginRequest::default(),
        warp_routing: WarpRouting::default(),
    };
    assert_eq!(
        empty.find_match("a", "/").1.service,
        Service::HttpStatus(503)
    );
    assert!(empty.catch_all().is_catch_all());
}

#[test]
fn error_is_usable_by_the_api() {
    let e = parse(json!({"ingress": [{"service": "http://127.0.0.1:2333 "}]})).unwrap_err();
    assert_eq!(
        format!("Bad Configuration: Validation failed: {e}"),
        r#"Bad Configuration: Validation failed: parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host"#
    );
    assert!(matches!(e.kind(), ErrorKind::InvalidServiceUrl(_)));
    assert_eq!(e.rule_index(), Some(0));
}
