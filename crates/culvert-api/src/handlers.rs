//! Endpoint handlers. Authentication, the account check and the permission
//! check already ran (see `routes.rs`); handlers validate input and talk to the
//! store.

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use culvert_proto::TunnelToken;
use culvert_store::{ConfigSource, NewTunnel, Page, TunType, Tunnel, TunnelPatch, now_micros};
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Principal, verify_bearer};
use crate::envelope::{ApiError, ApiResult, ResultInfo, code, ok, ok_page};
use crate::extract::{Ids, JsonBody};
use crate::management::RESOURCES;
use crate::query::parse_list_query;
use crate::state::ApiState;
use crate::views::*;

const MAX_NAME_LEN: usize = 255;
const MIN_SECRET_BYTES: usize = 32;

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "name must be at most {MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must not contain control characters",
        ));
    }
    Ok(())
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = STANDARD.decode(secret.trim()).map_err(|_| {
        ApiError::bad_request("tunnel_secret must be standard base64 (with padding)")
    })?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(ApiError::bad_request(format!(
            "tunnel_secret must encode at least {MIN_SECRET_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

fn random_secret() -> Result<Vec<u8>, ApiError> {
    let mut secret = vec![0u8; MIN_SECRET_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| ApiError::internal("system RNG failed"))?;
    Ok(secret)
}

fn metadata_object(v: Option<serde_json::Value>) -> Result<Option<serde_json::Value>, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(ApiError::bad_request("metadata must be a JSON object")),
    }
}

/// The tunnel token: byte-exact `{"a","t","s"}` (spec §10.2), followed by the
/// server's extra keys when it has any.
fn token_of(st: &ApiState, t: &Tunnel) -> String {
    let token = TunnelToken {
        account_tag: t.account_id.clone(),
        tunnel_id: t.id,
        secret: t.secret.clone(),
        endpoint: None,
    };
    let extras = st.token_extras();
    if extras.is_empty() {
        return token.encode();
    }
    let mut obj = serde_json::Map::new();
    obj.insert("a".into(), json!(token.account_tag));
    obj.insert("t".into(), json!(token.tunnel_id.to_string()));
    obj.insert("s".into(), json!(STANDARD.encode(&token.secret)));
    obj.extend(extras.iter().map(|(k, v)| (k.clone(), v.clone())));
    STANDARD.encode(serde_json::Value::Object(obj).to_string())
}

/// The tunnel of the path, of the route's type; 404 when unknown.
async fn load(st: &ApiState, ids: &Ids, tun_type: TunType) -> Result<Tunnel, ApiError> {
    st.store()
        .get_tunnel(&ids.account_id, Some(tun_type), ids.tunnel())
        .await?
        .ok_or_else(ApiError::tunnel_not_found)
}

/// Like [`load`], but a deleted tunnel is gone for operations that would act on it.
async fn load_live(st: &ApiState, ids: &Ids, tun_type: TunType) -> Result<Tunnel, ApiError> {
    let t = load(st, ids, tun_type).await?;
    if t.deleted_at.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::TUNNEL_NOT_FOUND,
            "Tunnel has been deleted",
        ));
    }
    Ok(t)
}

// ---- tunnels (shared by cfd_tunnel and warp_connector) -----------------

async fn list(st: &ApiState, ids: &Ids, raw: Option<&str>, types: Option<TunType>) -> ApiResult {
    let mut q = parse_list_query(raw, types.is_none())?;
    if let Some(t) = types {
        q.filter.tun_types = vec![t];
    }
    let page = if q.matches_nothing {
        Page {
            items: Vec::new(),
            total_count: 0,
        }
    } else {
        st.store()
            .list_tunnels(&ids.account_id, &q.filter, q.page, q.per_page)
            .await?
    };
    let items: Vec<TunnelView> = page.items.iter().map(TunnelView::new).collect();
    let info = ResultInfo {
        page: q.page,
        per_page: q.per_page,
        count: items.len() as u64,
        total_count: page.total_count,
        total_pages: page.total_count.div_ceil(u64::from(q.per_page)),
    };
    Ok(ok_page(&items, info))
}

async fn create(st: &ApiState, ids: &Ids, body: CreateTunnelBody, tun_type: TunType) -> ApiResult {
    validate_name(&body.name)?;
    let config_src = match (tun_type, body.config_src.as_deref()) {
        (TunType::CfdTunnel, Some(s)) => ConfigSource::parse(s).ok_or_else(|| {
            ApiError::bad_request("config_src must be \"local\" or \"cloudflare\"")
        })?,
        _ => ConfigSource::Local,
    };
    let secret = match body.tunnel_secret.as_deref() {
        Some(s) => decode_secret(s)?,
        None => random_secret()?,
    };
    let metadata = metadata_object(body.metadata)?.unwrap_or_else(|| json!({}));
    let tunnel = st
        .store()
        .create_tunnel(NewTunnel {
            account_id: ids.account_id.clone(),
            name: body.name,
            tun_type,
            config_src,
            secret,
            metadata,
            ha: tun_type == TunType::WarpConnector && body.ha.unwrap_or(false),
        })
        .await?;
    let mut view = TunnelView::new(&tunnel).with_token(token_of(st, &tunnel));
    if tun_type == TunType::CfdTunnel {
        view = view.with_credentials(&tunnel);
    }
    Ok(ok(&view))
}

async fn edit(st: &ApiState, ids: &Ids, body: PatchTunnelBody, tun_type: TunType) -> ApiResult {
    if let Some(name) = &body.name {
        validate_name(name)?;
    }
    let secret = body
        .tunnel_secret
        .as_deref()
        .map(decode_secret)
        .transpose()?;
    let rotated = secret.is_some();
    let patch = TunnelPatch {
        name: body.name,
        secret,
        metadata: metadata_object(body.metadata)?,
    };
    load_live(st, ids, tun_type).await?;
    let tunnel = st
        .store()
        .update_tunnel(&ids.account_id, tun_type, ids.tunnel(), patch)
        .await?;
    let mut view = TunnelView::new(&tunnel);
    if rotated {
        view = view.with_token(token_of(st, &tunnel));
    }
    Ok(ok(&view))
}

async fn delete(st: &ApiState, ids: &Ids, raw: Option<&str>, tun_type: TunType) -> ApiResult {
    let cascade = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .any(|(k, v)| k == "cascade" && v.eq_ignore_ascii_case("true"));
    let (tunnel, removed) = st
        .store()
        .delete_tunnel(&ids.account_id, tun_type, ids.tunnel(), cascade)
        .await?;
    if !removed.connections.is_empty() {
        st.edge().connections_removed(tunnel.id, &removed);
    }
    Ok(ok(&TunnelView::new(&tunnel)))
}

async fn token(st: &ApiState, ids: &Ids, tun_type: TunType) -> ApiResult {
    let tunnel = load_live(st, ids, tun_type).await?;
    Ok(ok(&token_of(st, &tunnel)))
}

async fn connections(st: &ApiState, ids: &Ids, tun_type: TunType) -> ApiResult {
    load(st, ids, tun_type).await?;
    let connectors = st.store().list_connectors(ids.tunnel()).await?;
    let views: Vec<ConnectorView> = connectors.iter().map(ConnectorView::new).collect();
    Ok(ok(&views))
}

async fn connector(st: &ApiState, ids: &Ids, tun_type: TunType) -> ApiResult {
    load(st, ids, tun_type).await?;
    let c = st
        .store()
        .get_connector(ids.tunnel(), ids.connector())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                code::CONNECTOR_NOT_FOUND,
                "Connector not found",
            )
        })?;
    Ok(ok(&ConnectorView::new(&c)))
}

// ---- cfd_tunnel --------------------------------------------------------

pub async fn cfd_list(State(st): State<ApiState>, ids: Ids, RawQuery(q): RawQuery) -> ApiResult {
    list(&st, &ids, q.as_deref(), Some(TunType::CfdTunnel)).await
}

pub async fn cfd_create(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<CreateTunnelBody>,
) -> ApiResult {
    create(&st, &ids, b, TunType::CfdTunnel).await
}

pub async fn cfd_get(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    Ok(ok(&TunnelView::new(
        &load(&st, &ids, TunType::CfdTunnel).await?,
    )))
}

pub async fn cfd_edit(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<PatchTunnelBody>,
) -> ApiResult {
    edit(&st, &ids, b, TunType::CfdTunnel).await
}

pub async fn cfd_delete(State(st): State<ApiState>, ids: Ids, RawQuery(q): RawQuery) -> ApiResult {
    delete(&st, &ids, q.as_deref(), TunType::CfdTunnel).await
}

pub async fn cfd_token(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    token(&st, &ids, TunType::CfdTunnel).await
}

pub async fn cfd_connections(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    connections(&st, &ids, TunType::CfdTunnel).await
}

pub async fn cfd_connector(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    connector(&st, &ids, TunType::CfdTunnel).await
}

pub async fn cfd_delete_connections(
    State(st): State<ApiState>,
    ids: Ids,
    RawQuery(q): RawQuery,
) -> ApiResult {
    load(&st, &ids, TunType::CfdTunnel).await?;
    let mut client_id = None;
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        if k == "client_id" && !v.is_empty() {
            client_id = Some(Uuid::try_parse(v.trim()).map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid value {v:?} for query parameter client_id: expected a UUID"
                ))
            })?);
        }
    }
    let removed = st
        .store()
        .remove_connections(ids.tunnel(), client_id)
        .await?;
    if !removed.connections.is_empty() {
        st.edge().connections_removed(ids.tunnel(), &removed);
    }
    Ok(ok(&json!({})))
}

pub async fn cfd_get_config(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    let tunnel = load(&st, &ids, TunType::CfdTunnel).await?;
    let view = match st.store().get_config(tunnel.id).await? {
        Some(c) => ConfigView::new(&c),
        None => ConfigView::empty(&tunnel),
    };
    Ok(ok(&view))
}

pub async fn cfd_put_config(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<PutConfigBody>,
) -> ApiResult {
    let tunnel = load_live(&st, &ids, TunType::CfdTunnel).await?;
    let config = match b.config {
        None | Some(serde_json::Value::Null) => json!({}),
        Some(c) => c,
    };
    if let Err(e) = culvert_ingress::parse_remote_config(&config) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::BAD_CONFIGURATION,
            format!("Bad Configuration: Validation failed: {e}\n"),
        ));
    }
    let stored = st
        .store()
        .put_config(
            &ids.account_id,
            tunnel.id,
            &config,
            ConfigSource::Cloudflare,
        )
        .await?;
    st.edge().config_updated(&stored);
    Ok(ok(&ConfigView::new(&stored)))
}

fn check_resources(resources: &[String]) -> Result<(), ApiError> {
    if resources.is_empty() {
        return Err(ApiError::bad_request(
            "resources must name at least one resource",
        ));
    }
    if let Some(bad) = resources.iter().find(|r| !RESOURCES.contains(&r.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Unknown management resource {bad:?}: expected one of {}",
            RESOURCES.join(", ")
        )));
    }
    Ok(())
}

async fn issue_management_token(
    st: &ApiState,
    ids: &Ids,
    principal: &Principal,
    resources: Vec<String>,
) -> ApiResult {
    check_resources(&resources)?;
    let tunnel = load_live(st, ids, TunType::CfdTunnel).await?;
    let jwt = st
        .keys()
        .issue(
            tunnel.id,
            &tunnel.account_id,
            principal.actor_id(),
            resources,
            now_micros() / 1_000_000,
        )
        .map_err(ApiError::internal)?;
    Ok(ok(&jwt))
}

pub async fn cfd_management(
    State(st): State<ApiState>,
    ids: Ids,
    Extension(principal): Extension<Principal>,
    JsonBody(b): JsonBody<ManagementBody>,
) -> ApiResult {
    issue_management_token(&st, &ids, &principal, b.resources).await
}

pub async fn cfd_management_resource(
    State(st): State<ApiState>,
    ids: Ids,
    Extension(principal): Extension<Principal>,
) -> ApiResult {
    let resource = ids.resource.clone().unwrap_or_default();
    issue_management_token(&st, &ids, &principal, vec![resource]).await
}

// ---- all tunnels -------------------------------------------------------

pub async fn all_tunnels(State(st): State<ApiState>, ids: Ids, RawQuery(q): RawQuery) -> ApiResult {
    list(&st, &ids, q.as_deref(), None).await
}

// ---- warp_connector ----------------------------------------------------

pub async fn warp_list(State(st): State<ApiState>, ids: Ids, RawQuery(q): RawQuery) -> ApiResult {
    list(&st, &ids, q.as_deref(), Some(TunType::WarpConnector)).await
}

pub async fn warp_create(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<CreateTunnelBody>,
) -> ApiResult {
    create(&st, &ids, b, TunType::WarpConnector).await
}

pub async fn warp_get(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    Ok(ok(&TunnelView::new(
        &load(&st, &ids, TunType::WarpConnector).await?,
    )))
}

pub async fn warp_edit(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<PatchTunnelBody>,
) -> ApiResult {
    edit(&st, &ids, b, TunType::WarpConnector).await
}

pub async fn warp_delete(State(st): State<ApiState>, ids: Ids, RawQuery(q): RawQuery) -> ApiResult {
    delete(&st, &ids, q.as_deref(), TunType::WarpConnector).await
}

pub async fn warp_token(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    token(&st, &ids, TunType::WarpConnector).await
}

pub async fn warp_connections(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    connections(&st, &ids, TunType::WarpConnector).await
}

pub async fn warp_connector(State(st): State<ApiState>, ids: Ids) -> ApiResult {
    connector(&st, &ids, TunType::WarpConnector).await
}

// ---- token verification -----------------------------------------------

fn invalid_api_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        code::INVALID_API_TOKEN,
        "Invalid API Token",
    )
}

fn verify_view(t: &culvert_store::ApiToken) -> TokenVerifyView {
    TokenVerifyView {
        id: t.id.clone(),
        status: "active",
        expires_on: t.expires_on.map(crate::timefmt::format_micros),
        not_before: t.not_before.map(crate::timefmt::format_micros),
        account_id: t.account_id.clone(),
    }
}

pub async fn user_token_verify(State(st): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let t = verify_bearer(st.store(), &headers)
        .await
        .ok_or_else(invalid_api_token)?;
    Ok(ok(&verify_view(&t)))
}

pub async fn account_token_verify(
    State(st): State<ApiState>,
    headers: HeaderMap,
    ids: Ids,
) -> ApiResult {
    let t = verify_bearer(st.store(), &headers)
        .await
        .filter(|t| t.account_id == ids.account_id)
        .ok_or_else(invalid_api_token)?;
    Ok(ok(&verify_view(&t)))
}

// ---- zone-level routes -----------------------------------------------------

/// cloudflared's hostname check (`tunnel route dns`).
fn valid_hostname(h: &str) -> bool {
    let mut chars = h.chars();
    h.len() <= 253
        && chars
            .next()
            .is_some_and(|c| c == '*' || c == '_' || c.is_ascii_alphanumeric())
        && chars.all(|c| c == '-' || c == '_' || c == '.' || c.is_ascii_alphanumeric())
}

fn in_zone(host: &str, zone: &str) -> bool {
    host == zone
        || host
            .strip_suffix(zone)
            .is_some_and(|rest| rest.ends_with('.'))
}

pub async fn zone_route(
    State(st): State<ApiState>,
    ids: Ids,
    JsonBody(b): JsonBody<RouteBody>,
) -> ApiResult {
    if b.kind != "dns" {
        return Err(ApiError::bad_request(format!(
            "Unsupported route type {:?}: only \"dns\" routes are supported",
            b.kind
        )));
    }
    let zone_id = ids.zone_id.clone().unwrap_or_default();
    let zone = st
        .store()
        .get_zone(&zone_id)
        .await?
        .ok_or_else(|| ApiError::could_not_route(&format!("/zones/{zone_id}")))?;
    let host = culvert_store::normalize_hostname(&b.user_hostname);
    if !valid_hostname(&host) {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a valid hostname",
            b.user_hostname
        )));
    }
    // A bare label is qualified with the zone, as Cloudflare does; a full name
    // must fall inside one of the account's zones (the most specific wins).
    let (zone, host) = if in_zone(&host, &zone.name) {
        (zone, host)
    } else if !host.contains('.') {
        let qualified = format!("{host}.{}", zone.name);
        (zone, qualified)
    } else {
        let best = st
            .store()
            .list_zones(Some(&zone.account_id))
            .await?
            .into_iter()
            .filter(|z| in_zone(&host, &z.name))
            .max_by_key(|z| z.name.len())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{host} is not in zone {} nor in any other zone of the account",
                    zone.name
                ))
            })?;
        (best, host)
    };
    let tunnel = st
        .store()
        .get_tunnel(&zone.account_id, Some(TunType::CfdTunnel), ids.tunnel())
        .await?
        .filter(|t| t.deleted_at.is_none())
        .ok_or_else(ApiError::tunnel_not_found)?;
    let change = st
        .store()
        .upsert_route(&zone, &host, tunnel.id, b.overwrite_existing)
        .await?;
    st.edge().route_changed(&host);
    let cname = match change {
        culvert_store::RouteChange::New => "new",
        culvert_store::RouteChange::Unchanged => "unchanged",
    };
    Ok(ok(&RouteResultView { cname, name: host }))
}
