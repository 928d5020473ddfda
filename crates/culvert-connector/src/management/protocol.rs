//! The `/logs` session protocol (edge-protocol.md §6), free of I/O: client
//! commands, filters, sampling, the log entry encoding, the one-session
//! rule with pre-emption by the same actor, and the management JWT claims
//! the connector reads (it never verifies the signature: the edge did).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Close code: the first command was not `start_streaming`.
pub const CLOSE_EXPECTED_START: u16 = 4001;
/// Close code: another actor already streams from this connector.
pub const CLOSE_SESSION_LIMIT: u16 = 4002;
/// Close code: no `start_streaming` within [`IDLE_LIMIT_SECS`].
pub const CLOSE_IDLE: u16 = 4003;
pub const REASON_EXPECTED_START: &str = "expected start streaming as first event";
pub const REASON_SESSION_LIMIT: &str = "limit exceeded for streaming sessions";
pub const REASON_IDLE: &str = "session was idle for too long";
/// How long a connection may stay open before `start_streaming`.
pub const IDLE_LIMIT_SECS: u64 = 300;
/// WebSocket ping interval.
pub const PING_INTERVAL_SECS: u64 = 15;
/// Entries buffered per session; newer ones are dropped when full.
pub const SESSION_BUFFER: usize = 30;

/// The `event` of a log entry. `Cloudflared` is Go's zero value and is
/// omitted from the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Cloudflared,
    Http,
    Tcp,
    Udp,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Cloudflared => "cloudflared",
            EventType::Http => "http",
            EventType::Tcp => "tcp",
            EventType::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "cloudflared" => Some(EventType::Cloudflared),
            "http" => Some(EventType::Http),
            "tcp" => Some(EventType::Tcp),
            "udp" => Some(EventType::Udp),
            _ => None,
        }
    }
}

/// Log level, ordered. `Debug` is the zero value and omitted from the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        match s {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

fn is_debug(l: &LogLevel) -> bool {
    *l == LogLevel::Debug
}

fn is_cloudflared(e: &EventType) -> bool {
    *e == EventType::Cloudflared
}

/// One log line as sent to `cloudflared tail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339.
    pub time: String,
    #[serde(default = "debug_level", skip_serializing_if = "is_debug")]
    pub level: LogLevel,
    #[serde(default)]
    pub message: String,
    #[serde(default = "cloudflared_event", skip_serializing_if = "is_cloudflared")]
    pub event: EventType,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

fn debug_level() -> LogLevel {
    LogLevel::Debug
}

fn cloudflared_event() -> EventType {
    EventType::Cloudflared
}

/// `start_streaming` filters; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sampling: f64,
}

fn is_zero(f: &f64) -> bool {
    *f == 0.0
}

impl Filters {
    /// Sampling clamped to [0, 1]; NaN counts as "no sampling".
    pub fn sampling(&self) -> f64 {
        if self.sampling.is_nan() {
            0.0
        } else {
            self.sampling.clamp(0.0, 1.0)
        }
    }

    /// Whether an entry of this level and event passes the level and event
    /// filters (sampling is separate: it needs randomness).
    pub fn matches(&self, level: LogLevel, event: EventType) -> bool {
        if let Some(min) = self.level
            && level < min
        {
            return false;
        }
        self.events.is_empty() || self.events.contains(&event)
    }

    /// Sampling: `roll` is uniform in [0, 1). 0 and 1 keep everything.
    pub fn sampled(&self, roll: f64) -> bool {
        let s = self.sampling();
        s <= 0.0 || s >= 1.0 || roll < s
    }

    /// The full decision for one entry.
    pub fn accepts(&self, level: LogLevel, event: EventType, roll: f64) -> bool {
        self.matches(level, event) && self.sampled(roll)
    }
}

/// A client → connector command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    StartStreaming {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filters: Option<Filters>,
    },
    StopStreaming,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid client message: {0}")]
    BadMessage(String),
}

impl ClientMessage {
    pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        serde_json::from_str(text).map_err(|e| ProtocolError::BadMessage(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A connector → client frame: `{"type":"logs","logs":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsMessage {
    #[serde(rename = "type")]
    pub kind: String,
    pub logs: Vec<LogEntry>,
}

impl LogsMessage {
    pub fn new(logs: Vec<LogEntry>) -> LogsMessage {
        LogsMessage {
            kind: "logs".into(),
            logs,
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<LogsMessage, ProtocolError> {
        let m: LogsMessage =
            serde_json::from_str(text).map_err(|e| ProtocolError::BadMessage(e.to_string()))?;
        if m.kind != "logs" {
            return Err(ProtocolError::BadMessage(format!(
                "unexpected message type {:?}",
                m.kind
            )));
        }
        Ok(m)
    }
}

/// What a connection does with its first command.
#[derive(Debug, Clone, PartialEq)]
pub enum FirstCommand {
    /// Start streaming with these filters.
    Start(Filters),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The first text frame of a `/logs` connection must be `start_streaming`.
pub fn first_command(text: &str) -> FirstCommand {
    match ClientMessage::parse(text) {
        Ok(ClientMessage::StartStreaming { filters }) => {
            FirstCommand::Start(filters.unwrap_or_default())
        }
        _ => FirstCommand::Close(CLOSE_EXPECTED_START, REASON_EXPECTED_START),
    }
}

/// Outcome of asking for the streaming slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The slot was free.
    Started,
    /// The same actor held it; that session (by id) must stop.
    Preempted(u64),
    /// Another actor holds it: close with [`CLOSE_SESSION_LIMIT`].
    Refused,
}

/// The one streaming slot of a connector.
#[derive(Debug, Default)]
pub struct SessionSlot {
    active: Option<(u64, String)>,
}

impl SessionSlot {
    /// The session holding the slot and its actor.
    pub fn active(&self) -> Option<(u64, &str)> {
        self.active.as_ref().map(|(i, a)| (*i, a.as_str()))
    }

    pub fn admit(&mut self, session: u64, actor: &str) -> Admission {
        match &self.active {
            None => {
                self.active = Some((session, actor.to_owned()));
                Admission::Started
            }
            Some((old, who)) if who == actor => {
                let old = *old;
                self.active = Some((session, actor.to_owned()));
                Admission::Preempted(old)
            }
            Some(_) => Admission::Refused,
        }
    }

    /// Frees the slot if `session` holds it (a pre-empted session ending
    /// late must not free its successor's slot).
    pub fn release(&mut self, session: u64) -> bool {
        if self.active.as_ref().is_some_and(|(i, _)| *i == session) {
            self.active = None;
            true
        } else {
            false
        }
    }
}

/// The claims the connector reads from a management token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub tunnel_id: String,
    pub account_tag: String,
    pub actor_id: String,
    pub support: bool,
}

#[derive(Deserialize)]
struct RawClaims {
    tun: Option<RawTun>,
    actor: Option<RawActor>,
}

#[derive(Deserialize)]
struct RawTun {
    #[serde(default)]
    id: String,
    #[serde(default)]
    account_tag: String,
}

#[derive(Deserialize)]
struct RawActor {
    #[serde(default)]
    id: String,
    #[serde(default)]
    support: bool,
}

/// Parses (does not verify) a management JWT the way cloudflared does:
/// header alg ES256, non-empty `tun.id`, `tun.account_tag`, `actor.id`.
pub fn parse_token(token: &str) -> Option<TokenClaims> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "ES256" {
        return None;
    }
    let raw: RawClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (tun, actor) = (raw.tun?, raw.actor?);
    if tun.id.is_empty() || tun.account_tag.is_empty() || actor.id.is_empty() {
        return None;
    }
    Some(TokenClaims {
        tunnel_id: tun.id,
        account_tag: tun.account_tag,
        actor_id: actor.id,
        support: actor.support,
    })
}

/// The body of cloudflared's 400 for a missing or unparsable token.
pub const MISSING_TOKEN_BODY: &str = r#"{"success":false,"errors":[{"code":1001,"message":"missing access_token query parameter"}]}"#;

/// The `access_token` query parameter of a request target, if any.
pub fn access_token(path_and_query: &str) -> Option<String> {
    let (_, query) = path_and_query.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn entry_encoding_omits_zero_values() {
        let e = LogEntry {
            time: "2026-11-22T10:00:00Z".into(),
            level: LogLevel::Debug,
            message: "GET /x 200".into(),
            event: EventType::Http,
            fields: serde_json::Map::new(),
        };
        let m = LogsMessage::new(vec![e.clone()]).encode();
        assert_eq!(
            m,
            r#"{"type":"logs","logs":[{"time":"2026-11-22T10:00:00Z","message":"GET /x 200","event":"http"}]}"#
        );
        let c = LogEntry {
            level: LogLevel::Warn,
            event: EventType::Cloudflared,
            ..e
        };
        let m = LogsMessage::new(vec![c.clone()]).encode();
        assert!(m.contains(r#""level":"warn""#));
        assert!(!m.contains("event"));
        assert_eq!(LogsMessage::decode(&m).unwrap().logs, vec![c]);
    }

    #[test]
    fn client_messages_like_cloudflared_tail() {
        let m = ClientMessage::parse(
            r#"{"type":"start_streaming","filters":{"events":["http","tcp"],"level":"info","sampling":0.5}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::StartStreaming {
                filters: Some(Filters {
                    events: vec![EventType::Http, EventType::Tcp],
                    level: Some(LogLevel::Info),
                    sampling: 0.5
                })
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"stop_streaming"}"#).unwrap(),
            ClientMessage::StopStreaming
        );
        assert_eq!(
            first_command(r#"{"type":"start_streaming"}"#),
            FirstCommand::Start(Filters::default())
        );
        assert_eq!(
            first_command(r#"{"type":"stop_streaming"}"#),
            FirstCommand::Close(4001, REASON_EXPECTED_START)
        );
        assert_eq!(
            first_command("not json"),
            FirstCommand::Close(4001, REASON_EXPECTED_START)
        );
        assert_eq!(
            first_command(r#"{"type":"start_streaming","filters":{"level":"loud"}}"#),
            FirstCommand::Close(4001, REASON_EXPECTED_START)
        );
    }

    #[test]
    fn filters() {
        let f = Filters {
            events: vec![EventType::Http],
            level: Some(LogLevel::Info),
            sampling: 0.0,
        };
        assert!(f.matches(LogLevel::Info, EventType::Http));
        assert!(f.matches(LogLevel::Error, EventType::Http));
        assert!(!f.matches(LogLevel::Debug, EventType::Http));
        assert!(!f.matches(LogLevel::Error, EventType::Tcp));
        let all = Filters::default();
        assert!(all.accepts(LogLevel::Debug, EventType::Cloudflared, 0.99));
        let half = Filters {
            sampling: 0.5,
            ..Filters::default()
        };
        assert!(half.accepts(LogLevel::Debug, EventType::Http, 0.2));
        assert!(!half.accepts(LogLevel::Debug, EventType::Http, 0.7));
        let over = Filters {
            sampling: 7.0,
            ..Filters::default()
        };
        assert_eq!(over.sampling(), 1.0);
        assert!(over.sampled(0.999));
    }

    #[test]
    fn one_session_with_preemption_by_the_same_actor() {
        let mut slot = SessionSlot::default();
        assert_eq!(slot.admit(1, "alice"), Admission::Started);
        assert_eq!(slot.admit(2, "bob"), Admission::Refused);
        assert_eq!(slot.admit(3, "alice"), Admission::Preempted(1));
        assert!(
            !slot.release(1),
            "the pre-empted session must not free the slot"
        );
        assert_eq!(slot.active(), Some((3, "alice")));
        assert!(slot.release(3));
        assert_eq!(slot.admit(4, "bob"), Admission::Started);
    }

    #[test]
    fn token_parsing() {
        let h = r#"{"typ":"JWT","alg":"ES256","kid":"1"}"#;
        let ok = r#"{"tun":{"id":"t","account_tag":"a"},"actor":{"id":"me","support":false},"res":["logs"],"iss":"tunnelstore","exp":1,"iat":0}"#;
        let c = parse_token(&token(h, ok)).unwrap();
        assert_eq!(c.actor_id, "me");
        assert_eq!(c.tunnel_id, "t");
        assert!(parse_token(&token(r#"{"alg":"HS256"}"#, ok)).is_none());
        let no_actor = r#"{"tun":{"id":"t","account_tag":"a"},"actor":{"id":""}}"#;
        assert!(parse_token(&token(h, no_actor)).is_none());
        assert!(parse_token("a.b").is_none());
        assert!(parse_token("").is_none());
        assert_eq!(
            access_token("/logs?connector_id=x&access_token=a%2Eb"),
            Some("a.b".into())
        );
        assert_eq!(access_token("/logs?access_token="), None);
        assert_eq!(access_token("/logs"), None);
    }

    proptest! {
        #[test]
        fn client_message_parse_total(s in any::<String>()) {
            let _ = ClientMessage::parse(&s);
            let _ = first_command(&s);
        }

        #[test]
        fn token_parse_total(s in "[A-Za-z0-9_.-]{0,200}") {
            let _ = parse_token(&s);
        }

        #[test]
        fn filters_round_trip(
            events in proptest::collection::vec(0u8..4, 0..4),
            level in proptest::option::of(0u8..4),
            sampling in (0u32..=1000).prop_map(|n| f64::from(n) / 1000.0),
        ) {
            let ev = [EventType::Cloudflared, EventType::Http, EventType::Tcp, EventType::Udp];
            let lv = [LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error];
            let m = ClientMessage::StartStreaming { filters: Some(Filters {
                events: events.iter().map(|i| ev[*i as usize]).collect(),
                level: level.map(|i| lv[i as usize]),
                sampling,
            })};
            prop_assert_eq!(ClientMessage::parse(&m.to_json()).unwrap(), m);
        }

        #[test]
        fn sampling_keeps_about_its_share(s in 0.05f64..0.95) {
            let f = Filters { sampling: s, ..Filters::default() };
            let kept = (0..1000).filter(|i| f.sampled(f64::from(*i) / 1000.0)).count();
            prop_assert!((kept as f64 - s * 1000.0).abs() <= 1.0);
        }

        #[test]
        fn slot_never_holds_two(ops in proptest::collection::vec((0u8..3, any::<bool>()), 0..40)) {
            let mut slot = SessionSlot::default();
            let mut live: Vec<u64> = Vec::new();
            for (n, (actor, start)) in ops.into_iter().enumerate() {
                let id = n as u64;
                if start {
                    match slot.admit(id, &actor.to_string()) {
                        Admission::Started => live.push(id),
                        Admission::Preempted(old) => { live.retain(|x| *x != old); live.push(id); }
                        Admission::Refused => {}
                    }
                } else if let Some(&first) = live.first() {
                    slot.release(first);
                    live.remove(0);
                }
                prop_assert!(live.len() <= 1);
                prop_assert_eq!(slot.active().map(|a| a.0), live.first().copied());
            }
        }
    }
}
