//! The route table. Every served route is declared once, with its access rule
//! and its documentation; the router and the OpenAPI document are both built
//! from this table, so they cannot drift apart.

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use crate::auth::{self, Access};
use crate::envelope::{ApiError, code, ok};
use crate::extract::is_account_id;
use crate::handlers as h;
use crate::openapi;
use crate::query::{LIST_PARAMS, ParamSpec, TUN_TYPES_PARAM};
use crate::state::ApiState;

/// The base path of every route.
pub const BASE: &str = "/client/v4";

/// A request or response body type, named for the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    CreateTunnel,
    PatchTunnel,
    PutConfig,
    Management,
    Route,
}

/// What `result` holds on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Tunnel,
    TunnelPage,
    Connectors,
    Connector,
    Config,
    Text,
    Empty,
    TokenVerify,
    Status,
    OpenApi,
    RouteResult,
}

/// One operation: method, path (relative to [`BASE`]), access and docs.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub query: &'static [ParamSpec],
    pub extra_query: &'static [ParamSpec],
    pub body: Option<Body>,
    pub result: ResultKind,
}

const NO_PARAMS: &[ParamSpec] = &[];
const CASCADE: &[ParamSpec] = &[ParamSpec {
    name: "cascade",
    kind: crate::query::ParamKind::Boolean,
    description: "Also remove the tunnel's connections instead of failing with 1022",
}];
const CLIENT_ID: &[ParamSpec] = &[ParamSpec {
    name: "client_id",
    kind: crate::query::ParamKind::Uuid,
    description: "Remove only this connector's connections",
}];
const TUN_TYPES: &[ParamSpec] = &[TUN_TYPES_PARAM];

use crate::auth::{
    TUNNEL_READ_GROUPS as TR, TUNNEL_WRITE_GROUPS as TW, WARP_READ_GROUPS as WR,
    WARP_WRITE_GROUPS as WW,
};

#[allow(clippy::too_many_arguments)]
const fn op(
    method: Method,
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    access: Access,
    query: &'static [ParamSpec],
    body: Option<Body>,
    result: ResultKind,
) -> Operation {
    Operation {
        method,
        path,
        operation_id,
        summary,
        access,
        query,
        extra_query: NO_PARAMS,
        body,
        result,
    }
}

/// Every operation with its handler.
pub fn operations() -> Vec<(Operation, MethodRouter<ApiState>)> {
    use Access::{AnyCredential, Groups, Public};
    use ResultKind as R;
    const CFD: &str = "/accounts/{account_id}/cfd_tunnel";
    const CFD_ONE: &str = "/accounts/{account_id}/cfd_tunnel/{tunnel_id}";
    const WARP: &str = "/accounts/{account_id}/warp_connector";
    const WARP_ONE: &str = "/accounts/{account_id}/warp_connector/{tunnel_id}";
    let get = || Method::GET;
    vec![
        (
            op(
                get(),
                "/openapi.json",
                "openapi",
                "This document",
                Public,
                NO_PARAMS,
                None,
                R::OpenApi,
            ),
            axum::routing::get(openapi::serve),
        ),
        (
            op(
                get(),
                "/status",
                "status",
                "Liveness of the API (static answer)",
                Public,
                NO_PARAMS,
                None,
                R::Status,
            ),
            axum::routing::get(status),
        ),
        (
            op(
                get(),
                "/user/tokens/verify",
                "user-api-tokens-verify-token",
                "Verify the presented API token",
                AnyCredential,
                NO_PARAMS,
                None,
                R::TokenVerify,
            ),
            axum::routing::get(h::user_token_verify),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/tokens/verify",
                "account-api-tokens-verify-token",
                "Verify the presented account API token",
                AnyCredential,
                NO_PARAMS,
                None,
                R::TokenVerify,
            ),
            axum::routing::get(h::account_token_verify),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/tunnels",
                "cloudflare-tunnel-list-all-tunnels",
                "List all tunnels (every type)",
                Groups(TR),
                LIST_PARAMS,
                None,
                R::TunnelPage,
            )
            .extra(TUN_TYPES),
            axum::routing::get(h::all_tunnels),
        ),
        (
            op(
                get(),
                CFD,
                "cloudflare-tunnel-list-cloudflare-tunnels",
                "List Cloudflare Tunnels",
                Groups(TR),
                LIST_PARAMS,
                None,
                R::TunnelPage,
            ),
            axum::routing::get(h::cfd_list),
        ),
        (
            op(
                Method::POST,
                CFD,
                "cloudflare-tunnel-create-a-cloudflare-tunnel",
                "Create a Cloudflare Tunnel",
                Groups(TW),
                NO_PARAMS,
                Some(Body::CreateTunnel),
                R::Tunnel,
            ),
            axum::routing::post(h::cfd_create),
        ),
        (
            op(
                get(),
                CFD_ONE,
                "cloudflare-tunnel-get-a-cloudflare-tunnel",
                "Get a Cloudflare Tunnel (deleted ones too)",
                Groups(TR),
                NO_PARAMS,
                None,
                R::Tunnel,
            ),
            axum::routing::get(h::cfd_get),
        ),
        (
            op(
                Method::PATCH,
                CFD_ONE,
                "cloudflare-tunnel-update-a-cloudflare-tunnel",
                "Rename a tunnel or rotate its secret",
                Groups(TW),
                NO_PARAMS,
                Some(Body::PatchTunnel),
                R::Tunnel,
            ),
            axum::routing::patch(h::cfd_edit),
        ),
        (
            op(
                Method::DELETE,
                CFD_ONE,
                "cloudflare-tunnel-delete-a-cloudflare-tunnel",
                "Soft-delete a tunnel",
                Groups(TW),
                CASCADE,
                None,
                R::Tunnel,
            ),
            axum::routing::delete(h::cfd_delete),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
                "cloudflare-tunnel-configuration-get-configuration",
                "Get the remote configuration",
                Groups(TR),
                NO_PARAMS,
                None,
                R::Config,
            ),
            axum::routing::get(h::cfd_get_config),
        ),
        (
            op(
                Method::PUT,
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
                "cloudflare-tunnel-configuration-put-configuration",
                "Replace the remote configuration (validated like cloudflared)",
                Groups(TW),
                NO_PARAMS,
                Some(Body::PutConfig),
                R::Config,
            ),
            axum::routing::put(h::cfd_put_config),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/connections",
                "cloudflare-tunnel-list-cloudflare-tunnel-connections",
                "List the tunnel's connectors and connections",
                Groups(TR),
                NO_PARAMS,
                None,
                R::Connectors,
            ),
            axum::routing::get(h::cfd_connections),
        ),
        (
            op(
                Method::DELETE,
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/connections",
                "cloudflare-tunnel-clean-up-cloudflare-tunnel-connections",
                "Remove connections (all, or one connector's)",
                Groups(TW),
                CLIENT_ID,
                None,
                R::Empty,
            ),
            axum::routing::delete(h::cfd_delete_connections),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/connectors/{connector_id}",
                "cloudflare-tunnel-get-cloudflare-tunnel-connector",
                "Get one connector",
                Groups(TR),
                NO_PARAMS,
                None,
                R::Connector,
            ),
            axum::routing::get(h::cfd_connector),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/token",
                "cloudflare-tunnel-get-a-cloudflare-tunnel-token",
                "Get the tunnel token",
                Groups(TW),
                NO_PARAMS,
                None,
                R::Text,
            ),
            axum::routing::get(h::cfd_token),
        ),
        (
            op(
                Method::POST,
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/management",
                "cloudflare-tunnel-get-a-cloudflare-tunnel-management-token",
                "Issue a management token",
                Groups(TW),
                NO_PARAMS,
                Some(Body::Management),
                R::Text,
            ),
            axum::routing::post(h::cfd_management),
        ),
        (
            op(
                Method::POST,
                "/accounts/{account_id}/cfd_tunnel/{tunnel_id}/management/{resource}",
                "cloudflare-tunnel-get-a-cloudflare-tunnel-management-token-for-resource",
                "Issue a management token for one resource (logs, admin, host_details)",
                Groups(TW),
                NO_PARAMS,
                None,
                R::Text,
            ),
            axum::routing::post(h::cfd_management_resource),
        ),
        (
            op(
                Method::PUT,
                "/zones/{zone_id}/tunnels/{tunnel_id}/routes",
                "cloudflare-tunnel-route-hostname",
                "Route a public hostname of the zone to a tunnel (cloudflared tunnel route dns)",
                Groups(TW),
                NO_PARAMS,
                Some(Body::Route),
                R::RouteResult,
            ),
            axum::routing::put(h::zone_route),
        ),
        (
            op(
                get(),
                WARP,
                "cloudflare-tunnel-list-warp-connector-tunnels",
                "List WARP Connector tunnels",
                Groups(WR),
                LIST_PARAMS,
                None,
                R::TunnelPage,
            ),
            axum::routing::get(h::warp_list),
        ),
        (
            op(
                Method::POST,
                WARP,
                "cloudflare-tunnel-create-a-warp-connector-tunnel",
                "Create a WARP Connector tunnel",
                Groups(WW),
                NO_PARAMS,
                Some(Body::CreateTunnel),
                R::Tunnel,
            ),
            axum::routing::post(h::warp_create),
        ),
        (
            op(
                get(),
                WARP_ONE,
                "cloudflare-tunnel-get-a-warp-connector-tunnel",
                "Get a WARP Connector tunnel",
                Groups(WR),
                NO_PARAMS,
                None,
                R::Tunnel,
            ),
            axum::routing::get(h::warp_get),
        ),
        (
            op(
                Method::PATCH,
                WARP_ONE,
                "cloudflare-tunnel-update-a-warp-connector-tunnel",
                "Rename or rotate a WARP Connector tunnel",
                Groups(WW),
                NO_PARAMS,
                Some(Body::PatchTunnel),
                R::Tunnel,
            ),
            axum::routing::patch(h::warp_edit),
        ),
        (
            op(
                Method::DELETE,
                WARP_ONE,
                "cloudflare-tunnel-delete-a-warp-connector-tunnel",
                "Soft-delete a WARP Connector tunnel",
                Groups(WW),
                CASCADE,
                None,
                R::Tunnel,
            ),
            axum::routing::delete(h::warp_delete),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/warp_connector/{tunnel_id}/token",
                "cloudflare-tunnel-get-a-warp-connector-tunnel-token",
                "Get a WARP Connector token",
                Groups(WW),
                NO_PARAMS,
                None,
                R::Text,
            ),
            axum::routing::get(h::warp_token),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/warp_connector/{tunnel_id}/connections",
                "cloudflare-tunnel-list-warp-connector-tunnel-connections",
                "List a WARP Connector's connectors",
                Groups(WR),
                NO_PARAMS,
                None,
                R::Connectors,
            ),
            axum::routing::get(h::warp_connections),
        ),
        (
            op(
                get(),
                "/accounts/{account_id}/warp_connector/{tunnel_id}/connectors/{connector_id}",
                "cloudflare-tunnel-get-warp-connector-tunnel-connector",
                "Get one WARP Connector connector",
                Groups(WR),
                NO_PARAMS,
                None,
                R::Connector,
            ),
            axum::routing::get(h::warp_connector),
        ),
    ]
}

impl Operation {
    const fn extra(mut self, extra: &'static [ParamSpec]) -> Self {
        self.extra_query = extra;
        self
    }
}

async fn status() -> Response {
    ok(&serde_json::json!({"status": "ok"}))
}

/// Authentication, account and permission checks for one operation.
async fn authorize(
    State((st, access)): State<(ApiState, Access)>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let Access::Groups(groups) = access else {
        return next.run(req).await;
    };
    // The body is not Sync; only the head is borrowed across awaits.
    let (mut parts, body) = req.into_parts();
    let result = async {
        let presented = auth::presented(&parts.headers)?;
        let principal = auth::authenticate(st.store(), &presented).await?;
        let path = parts.uri.path().to_string();
        let param = |name: &str| {
            params.as_ref().ok().and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_ascii_lowercase())
            })
        };
        // Account-level paths name the account; zone-level ones name a zone
        // that belongs to one.
        let account = match (param("account_id"), param("zone_id")) {
            (Some(a), _) if is_account_id(&a) => a,
            (None, Some(z)) if is_account_id(&z) => st
                .store()
                .get_zone(&z)
                .await?
                .map(|zone| zone.account_id)
                .ok_or_else(|| ApiError::could_not_route(&path))?,
            _ => return Err(ApiError::could_not_route(&path)),
        };
        if principal.token.account_id != account {
            // Unknown accounts look like unknown routes; another account's
            // paths are refused outright.
            return Err(match st.store().get_account(&account).await? {
                Some(_) => ApiError::new(
                    StatusCode::FORBIDDEN,
                    code::UNAUTHORIZED_RESOURCE,
                    "Unauthorized to access requested resource",
                ),
                None => ApiError::could_not_route(&path),
            });
        }
        if !principal.has_any(groups) {
            return Err(ApiError::forbidden());
        }
        Ok::<_, ApiError>(principal)
    }
    .await;
    match result {
        Ok(principal) => {
            parts.extensions.insert(principal);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}

/// One log line per request: method, path, status, duration.
///
/// Also: an error answered before the request body was read (bad
/// credentials, unknown route, …) would make hyper drop the keep-alive
/// connection without notice, and clients reusing it would fail; such
/// answers say `Connection: close` instead.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::info!(
        target: "culvert::api",
        %method,
        %path,
        status = resp.status().as_u16(),
        duration_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    resp
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "Method not allowed for this route",
    )
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

/// The whole API, mounted at [`BASE`].
pub fn router(state: ApiState) -> Router {
    let mut api = Router::new();
    for (operation, handler) in operations() {
        let layer_state = (state.clone(), operation.access);
        api = api.route(
            operation.path,
            handler.route_layer(middleware::from_fn_with_state(layer_state, authorize)),
        );
    }
    let api = api
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    Router::new()
        .nest(BASE, api)
        .fallback(no_route)
        .layer(middleware::from_fn(log_request))
}
