//! Extractors that turn bad input into v4 errors instead of axum's plain-text
//! rejections.

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::envelope::{ApiError, code};
use crate::state::ApiState;

/// The identifiers in the path, parsed. A malformed account id or UUID is a
/// 404 with 7003 ("perhaps your object identifier is invalid?").
#[derive(Debug, Clone)]
pub struct Ids {
    pub account_id: String,
    pub tunnel_id: Option<Uuid>,
    pub connector_id: Option<Uuid>,
    pub resource: Option<String>,
    pub zone_id: Option<String>,
}

impl Ids {
    /// The tunnel id of a route that has one.
    pub fn tunnel(&self) -> Uuid {
        self.tunnel_id.unwrap_or_default()
    }

    pub fn connector(&self) -> Uuid {
        self.connector_id.unwrap_or_default()
    }
}

/// 32 lowercase or uppercase hex characters.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl<S: Send + Sync> FromRequestParts<S> for Ids {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let path = parts.uri.path().to_string();
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::could_not_route(&path))?;
        let mut ids = Ids {
            account_id: String::new(),
            tunnel_id: None,
            connector_id: None,
            resource: None,
            zone_id: None,
        };
        for (key, value) in params.iter() {
            match key {
                "account_id" => {
                    if !is_account_id(value) {
                        return Err(ApiError::could_not_route(&path));
                    }
                    ids.account_id = value.to_ascii_lowercase();
                }
                "tunnel_id" | "connector_id" => {
                    let id =
                        Uuid::try_parse(value).map_err(|_| ApiError::could_not_route(&path))?;
                    if key == "tunnel_id" {
                        ids.tunnel_id = Some(id);
                    } else {
                        ids.connector_id = Some(id);
                    }
                }
                "resource" => ids.resource = Some(value.to_string()),
                "zone_id" => {
                    if !is_account_id(value) {
                        return Err(ApiError::could_not_route(&path));
                    }
                    ids.zone_id = Some(value.to_ascii_lowercase());
                }
                _ => {}
            }
        }
        Ok(ids)
    }
}

/// A JSON body, read up to the server's limit (413 beyond), parse errors
/// reported as 1030. An empty body reads as `{}` (SDKs send none on some
/// calls).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let limit = state.max_body_bytes();
        let too_large = || {
            ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                code::BODY_TOO_LARGE,
                format!("Request body too large: the limit is {limit} bytes"),
            )
        };
        if let Some(len) = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > limit as u64
        {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                let is_limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if is_limit {
                    too_large()
                } else {
                    ApiError::bad_request(format!("Could not read the request body: {e}"))
                }
            })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(ApiError::json_parse)
    }
}
