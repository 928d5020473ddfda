//! The v4 response envelope and the API's error type.
//!
//! Every answer, success or failure, is `{success, errors, messages, result[,
//! result_info]}` with `Content-Type: application/json` exactly (cloudflared
//! only decodes error bodies on string equality) and `messages: []` (cloudflared
//! decodes `messages` as strings, the SDKs as objects; only an empty array
//! satisfies both).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `result_info` of a collection.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct ResultInfo {
    pub page: u32,
    pub per_page: u32,
    pub count: u64,
    pub total_count: u64,
    pub total_pages: u64,
}

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    success: bool,
    errors: [(); 0],
    messages: [(); 0],
    result: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_info: Option<ResultInfo>,
}

/// A JSON body with the exact content type and a status.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

/// `200` with `result`.
pub fn ok<T: Serialize>(result: &T) -> Response {
    envelope(result, None)
}

/// `200` with a collection and its `result_info`.
pub fn ok_page<T: Serialize>(result: &T, info: ResultInfo) -> Response {
    envelope(result, Some(info))
}

fn envelope<T: Serialize>(result: &T, result_info: Option<ResultInfo>) -> Response {
    let body = Success {
        success: true,
        errors: [],
        messages: [],
        result,
        result_info,
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => json_response(StatusCode::OK, bytes),
        Err(e) => ApiError::internal(format!("cannot encode response: {e}")).into_response(),
    }
}

/// One item of `errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorItem {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_chain: Vec<ErrorItem>,
}

impl ErrorItem {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ErrorItem {
            code,
            message: message.into(),
            error_chain: Vec::new(),
        }
    }
}

/// An API failure: an HTTP status and one or more v4 error items.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<ErrorItem>,
}

/// Error codes we emit (Cloudflare's where known, see the README's table).
pub mod code {
    pub const INVALID_API_TOKEN: u32 = 1000;
    pub const INVALID_REQUEST: u32 = 1001;
    pub const BODY_TOO_LARGE: u32 = 1002;
    pub const TUNNEL_NOT_FOUND: u32 = 1003;
    pub const CONNECTOR_NOT_FOUND: u32 = 1004;
    pub const NAME_CONFLICT: u32 = 1013;
    pub const ACTIVE_CONNECTIONS: u32 = 1022;
    pub const JSON_PARSE: u32 = 1030;
    pub const BAD_CONFIGURATION: u32 = 1056;
    pub const NO_ROUTE: u32 = 7000;
    pub const RECORD_EXISTS: u32 = 81053;
    pub const COULD_NOT_ROUTE: u32 = 7003;
    pub const METHOD_NOT_ALLOWED: u32 = 10405;
    pub const INTERNAL: u32 = 10001;
    pub const BAD_HEADERS: u32 = 6003;
    pub const BAD_AUTH_HEADER_FORMAT: u32 = 6111;
    pub const GLOBAL_KEY_UNKNOWN: u32 = 9103;
    pub const MISSING_AUTH: u32 = 9106;
    pub const UNAUTHORIZED_RESOURCE: u32 = 9109;
    pub const AUTHENTICATION: u32 = 10000;
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![ErrorItem::new(code, message)],
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, message)
    }

    pub fn json_parse(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::JSON_PARSE,
            format!("Could not parse input. Json deserialize error: {detail}"),
        )
    }

    /// 404 with 7003 + 7000, for paths whose identifiers do not resolve.
    pub fn could_not_route(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            errors: vec![
                ErrorItem::new(
                    code::COULD_NOT_ROUTE,
                    format!(
                        "Could not route to {path}, perhaps your object identifier is invalid?"
                    ),
                ),
                ErrorItem::new(code::NO_ROUTE, "No route for that URI"),
            ],
        }
    }

    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::NO_ROUTE,
            "No route for that URI",
        )
    }

    pub fn tunnel_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::TUNNEL_NOT_FOUND,
            "Tunnel not found",
        )
    }

    pub fn authentication() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            code::AUTHENTICATION,
            "Authentication error",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            code::AUTHENTICATION,
            "Authentication error",
        )
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "Internal server error",
        )
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl From<culvert_store::StoreError> for ApiError {
    fn from(e: culvert_store::StoreError) -> Self {
        use culvert_store::StoreError as E;
        match e {
            E::NameConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                code::NAME_CONFLICT,
                "You already have a tunnel with this name. Delete the existing tunnel, or choose a different name for your new tunnel",
            ),
            E::TunnelNotFound(_) => ApiError::tunnel_not_found(),
            E::RouteConflict { hostname } => ApiError::new(
                StatusCode::CONFLICT,
                code::RECORD_EXISTS,
                format!(
                    "An A, AAAA, or CNAME record with that host already exists: {hostname} routes to another tunnel (use overwrite)"
                ),
            ),
            E::HasActiveConnections(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                code::ACTIVE_CONNECTIONS,
                "Cannot delete tunnel because it has active connections",
            ),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "store temporarily unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::INTERNAL,
                    "Service temporarily unavailable, retry later",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "errors": self.errors,
            "messages": [],
            "result": null,
        });
        let mut resp = json_response(self.status, body.to_string().into_bytes());
        // Stainless SDKs retry 408/409/429/5xx unless told otherwise; a
        // deterministic client error will not change on retry.
        if self.status.is_client_error()
            && self.status != StatusCode::REQUEST_TIMEOUT
            && self.status != StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

pub type ApiResult = Result<Response, ApiError>;
