//! Query strings of the list endpoints (spec §3, §13a).
//!
//! Parsed by hand rather than through serde because `tun_types` comes both
//! comma-separated and as a repeated key, the Python SDK sends `page=2.0`, and
//! unknown parameters must be ignored.

use culvert_store::{TunType, TunnelFilter, TunnelStatus};
use uuid::Uuid;

use crate::envelope::ApiError;
use crate::timefmt::parse_timestamp;

pub const DEFAULT_PER_PAGE: u32 = 20;
pub const MAX_PER_PAGE: u32 = 1000;

/// A documented query parameter (drives the OpenAPI document too).
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Integer,
    Boolean,
    DateTime,
    Uuid,
    Status,
    TunTypes,
}

/// Parameters of `GET …/cfd_tunnel` and `GET …/warp_connector`.
pub const LIST_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "name",
        kind: ParamKind::String,
        description: "Exact tunnel name",
    },
    ParamSpec {
        name: "is_deleted",
        kind: ParamKind::Boolean,
        description: "true: only deleted tunnels; false: only live ones; absent: both",
    },
    ParamSpec {
        name: "existed_at",
        kind: ParamKind::DateTime,
        description: "Tunnels that existed (created, not yet deleted) at this instant",
    },
    ParamSpec {
        name: "uuid",
        kind: ParamKind::Uuid,
        description: "Exact tunnel id",
    },
    ParamSpec {
        name: "was_active_at",
        kind: ParamKind::DateTime,
        description: "Tunnels with a connection at this instant",
    },
    ParamSpec {
        name: "was_inactive_at",
        kind: ParamKind::DateTime,
        description: "Tunnels without a connection at this instant",
    },
    ParamSpec {
        name: "include_prefix",
        kind: ParamKind::String,
        description: "Name starts with this prefix",
    },
    ParamSpec {
        name: "name_prefix",
        kind: ParamKind::String,
        description: "Alias of include_prefix (sent by cloudflared)",
    },
    ParamSpec {
        name: "exclude_prefix",
        kind: ParamKind::String,
        description: "Name does not start with this prefix",
    },
    ParamSpec {
        name: "status",
        kind: ParamKind::Status,
        description: "inactive, degraded, healthy or down",
    },
    ParamSpec {
        name: "page",
        kind: ParamKind::Integer,
        description: "Page number, from 1",
    },
    ParamSpec {
        name: "per_page",
        kind: ParamKind::Integer,
        description: "Items per page, 1 to 1000 (default 20)",
    },
];

/// The extra parameter of `GET /accounts/{id}/tunnels`.
pub const TUN_TYPES_PARAM: ParamSpec = ParamSpec {
    name: "tun_types",
    kind: ParamKind::TunTypes,
    description: "Tunnel types, comma-separated or repeated",
};

/// A parsed list request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: TunnelFilter,
    pub page: u32,
    pub per_page: u32,
    /// `tun_types` named only types culvert never stores (e.g. `ip_sec`):
    /// the answer is empty.
    pub matches_nothing: bool,
}

const KNOWN_TUN_TYPES: &[&str] = &[
    "cfd_tunnel",
    "warp_connector",
    "warp",
    "magic",
    "ip_sec",
    "gre",
    "cni",
];

fn invalid(name: &str, value: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid value {value:?} for query parameter {name}: expected {expected}"
    ))
}

/// Accepts integers and integral floats (`2.0`), which the Python SDK sends.
fn parse_count(name: &str, value: &str) -> Result<u32, ApiError> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u32>() {
        return Ok(n);
    }
    match v.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => Ok(f as u32),
        _ => Err(invalid(name, value, "a positive integer")),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(name, value, "true or false")),
    }
}

fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    parse_timestamp(value).ok_or_else(|| invalid(name, value, "an RFC 3339 date-time"))
}

/// Parses a raw query string. `allow_tun_types` is true for `/tunnels`.
pub fn parse_list_query(raw: Option<&str>, allow_tun_types: bool) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        filter: TunnelFilter::default(),
        page: 1,
        per_page: DEFAULT_PER_PAGE,
        matches_nothing: false,
    };
    // Whether tun_types named any type at all (stored by culvert or not).
    let mut named_a_type = false;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let f = &mut q.filter;
        match key.as_ref() {
            "name" => f.name = Some(value.into_owned()),
            "is_deleted" => f.is_deleted = Some(parse_bool("is_deleted", &value)?),
            "existed_at" => f.existed_at = Some(parse_time("existed_at", &value)?),
            "was_active_at" => f.was_active_at = Some(parse_time("was_active_at", &value)?),
            "was_inactive_at" => f.was_inactive_at = Some(parse_time("was_inactive_at", &value)?),
            "uuid" => {
                f.uuid = Some(
                    Uuid::parse_str(value.trim()).map_err(|_| invalid("uuid", &value, "a UUID"))?,
                )
            }
            "include_prefix" | "name_prefix" => f.include_prefix = Some(value.into_owned()),
            "exclude_prefix" => f.exclude_prefix = Some(value.into_owned()),
            "status" => {
                f.status = Some(TunnelStatus::parse(value.trim()).ok_or_else(|| {
                    invalid("status", &value, "one of inactive, degraded, healthy, down")
                })?)
            }
            "page" => {
                q.page = parse_count("page", &value)?;
                if q.page == 0 {
                    return Err(invalid("page", &value, "an integer of at least 1"));
                }
            }
            "per_page" => {
                q.per_page = parse_count("per_page", &value)?;
                if !(1..=MAX_PER_PAGE).contains(&q.per_page) {
                    return Err(invalid("per_page", &value, "an integer from 1 to 1000"));
                }
            }
            "tun_types" if allow_tun_types => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !KNOWN_TUN_TYPES.contains(&t) {
                        return Err(invalid(
                            "tun_types",
                            t,
                            "cfd_tunnel, warp_connector, warp, magic, ip_sec, gre or cni",
                        ));
                    }
                    named_a_type = true;
                    if let Some(tt) = TunType::parse(t)
                        && !f.tun_types.contains(&tt)
                    {
                        f.tun_types.push(tt);
                    }
                }
            }
            // Cloudflare ignores parameters it does not know.
            _ => {}
        }
    }
    q.matches_nothing = named_a_type && q.filter.tun_types.is_empty();
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let q = parse_list_query(None, false).unwrap();
        assert_eq!((q.page, q.per_page), (1, 20));
        assert_eq!(q.filter, TunnelFilter::default());
    }

    #[test]
    fn python_sdk_encodings() {
        let q = parse_list_query(
            Some("name=my+tunnel%2F%C3%A4&is_deleted=false&page=2.0&per_page=5.0&was_active_at=2024-01-02T03%3A04%3A05%2B00%3A00"),
            false,
        )
        .unwrap();
        assert_eq!(q.filter.name.as_deref(), Some("my tunnel/ä"));
        assert_eq!(q.filter.is_deleted, Some(false));
        assert_eq!((q.page, q.per_page), (2, 5));
        assert!(q.filter.was_active_at.is_some());
    }

    #[test]
    fn prefix_alias_and_unknown_params() {
        let q = parse_list_query(Some("name_prefix=ab&foo=bar&exclude_prefix=x"), false).unwrap();
        assert_eq!(q.filter.include_prefix.as_deref(), Some("ab"));
        assert_eq!(q.filter.exclude_prefix.as_deref(), Some("x"));
    }

    #[test]
    fn tun_types_both_forms() {
        let a = parse_list_query(Some("tun_types=cfd_tunnel,warp_connector"), true).unwrap();
        let b =
            parse_list_query(Some("tun_types=cfd_tunnel&tun_types=warp_connector"), true).unwrap();
        assert_eq!(
            a.filter.tun_types,
            vec![TunType::CfdTunnel, TunType::WarpConnector]
        );
        assert_eq!(a, b);
        let c = parse_list_query(Some("tun_types=ip_sec"), true).unwrap();
        assert!(c.matches_nothing);
        assert!(parse_list_query(Some("tun_types=bogus"), true).is_err());
        // Ignored where it is not a parameter.
        assert!(parse_list_query(Some("tun_types=bogus"), false).is_ok());
    }

    #[test]
    fn bad_values_are_400() {
        for raw in [
            "page=0",
            "page=x",
            "per_page=0",
            "per_page=1001",
            "per_page=1.5",
            "is_deleted=maybe",
            "uuid=nope",
            "status=sleepy",
            "existed_at=yesterday",
        ] {
            let e = parse_list_query(Some(raw), false).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{raw}");
        }
    }
}
