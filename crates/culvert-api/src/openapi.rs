//! `GET /client/v4/openapi.json`: an OpenAPI 3.1 document generated from the
//! route table and from the very types the handlers serialise.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::auth::Access;
use crate::envelope::{ResultInfo, json_response};
use crate::query::{ParamKind, ParamSpec};
use crate::routes::{BASE, Body, ResultKind, operations};
use crate::views::*;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    let s: Schema = g.subschema_for::<T>();
    s.to_value()
}

fn body_schema(g: &mut SchemaGenerator, b: Body) -> Value {
    match b {
        Body::CreateTunnel => schema::<CreateTunnelBody>(g),
        Body::PatchTunnel => schema::<PatchTunnelBody>(g),
        Body::PutConfig => schema::<PutConfigBody>(g),
        Body::Management => schema::<ManagementBody>(g),
        Body::Route => schema::<RouteBody>(g),
    }
}

fn result_schema(g: &mut SchemaGenerator, r: ResultKind) -> Value {
    match r {
        ResultKind::Tunnel => schema::<TunnelView>(g),
        ResultKind::TunnelPage => schema::<Vec<TunnelView>>(g),
        ResultKind::Connectors => schema::<Vec<ConnectorView>>(g),
        ResultKind::Connector => schema::<ConnectorView>(g),
        ResultKind::Config => schema::<ConfigView>(g),
        ResultKind::Text => json!({"type": "string"}),
        ResultKind::Empty => json!({"type": ["object", "null"]}),
        ResultKind::TokenVerify => schema::<TokenVerifyView>(g),
        ResultKind::Status => {
            json!({"type": "object", "properties": {"status": {"type": "string"}}})
        }
        ResultKind::OpenApi => json!({"type": "object"}),
        ResultKind::RouteResult => schema::<RouteResultView>(g),
    }
}

fn param_schema(kind: ParamKind) -> Value {
    match kind {
        ParamKind::String => json!({"type": "string"}),
        ParamKind::Integer => json!({"type": "integer", "minimum": 1}),
        ParamKind::Boolean => json!({"type": "boolean"}),
        ParamKind::DateTime => json!({"type": "string", "format": "date-time"}),
        ParamKind::Uuid => json!({"type": "string", "format": "uuid"}),
        ParamKind::Status => {
            json!({"type": "string", "enum": ["inactive", "degraded", "healthy", "down"]})
        }
        ParamKind::TunTypes => {
            json!({"type": "array", "items": {"type": "string", "enum": ["cfd_tunnel", "warp_connector", "warp", "magic", "ip_sec", "gre", "cni"]}})
        }
    }
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema = match name {
                "account_id" | "zone_id" => {
                    json!({"type": "string", "maxLength": 32, "pattern": "^[0-9a-fA-F]{32}$"})
                }
                "tunnel_id" | "connector_id" => {
                    json!({"type": "string", "format": "uuid", "maxLength": 36})
                }
                _ => json!({"type": "string"}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

fn query_params(specs: &[ParamSpec]) -> impl Iterator<Item = Value> + '_ {
    specs.iter().map(|p| {
        let mut v = json!({"name": p.name, "in": "query", "required": false, "description": p.description, "schema": param_schema(p.kind)});
        if p.kind == ParamKind::TunTypes {
            v["style"] = json!("form");
            v["explode"] = json!(true);
        }
        v
    })
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
}

/// Builds the document (pure; cached by [`document`]).
pub fn build() -> Value {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12.
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "#/components/schemas/".into();
    let mut g = settings.into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for (op, _) in operations() {
        let mut parameters = path_params(op.path);
        parameters.extend(query_params(op.query));
        parameters.extend(query_params(op.extra_query));
        let result = result_schema(&mut g, op.result);
        let mut success = json!({
            "type": "object",
            "required": ["success", "errors", "messages", "result"],
            "properties": {
                "success": {"type": "boolean", "const": true},
                "errors": {"type": "array", "maxItems": 0},
                "messages": {"type": "array", "maxItems": 0},
                "result": result,
            }
        });
        if op.result == ResultKind::TunnelPage {
            success["properties"]["result_info"] = schema::<ResultInfo>(&mut g);
        }
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "Success", "content": {"application/json": {"schema": success}}}),
        );
        responses.insert(
            "400".into(),
            error_response("Bad request (invalid input, malformed credentials)"),
        );
        let mut item = json!({
            "operationId": op.operation_id,
            "summary": op.summary,
            "parameters": parameters,
        });
        match op.access {
            Access::Public => {
                item["security"] = json!([]);
            }
            Access::AnyCredential => {
                responses.insert(
                    "401".into(),
                    error_response("Invalid API Token (code 1000)"),
                );
            }
            Access::Groups(groups) => {
                item["description"] = json!(format!(
                    "Requires one of the permission groups: {}.",
                    groups.join(", ")
                ));
                item["x-api-token-group"] = json!(groups);
                responses.insert(
                    "401".into(),
                    error_response("Unknown or expired credential (code 10000)"),
                );
                responses.insert(
                    "403".into(),
                    error_response("Missing permission group or another account (10000 / 9109)"),
                );
                responses.insert(
                    "404".into(),
                    error_response("Unknown object or identifier (7003 / 1003)"),
                );
            }
        }
        if op.body.is_some() || op.result == ResultKind::Tunnel {
            responses.insert("409".into(), error_response("Name conflict (code 1013)"));
        }
        if let Some(b) = op.body {
            let body = body_schema(&mut g, b);
            item["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
            responses.insert(
                "413".into(),
                error_response("Body larger than the server's limit"),
            );
        }
        item["responses"] = Value::Object(responses);
        let path = format!("{BASE}{}", op.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_ascii_lowercase()] = item;
    }
    let mut schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    schemas.insert(
        "ErrorEnvelope".into(),
        json!({
            "type": "object",
            "required": ["success", "errors", "messages", "result"],
            "properties": {
                "success": {"type": "boolean", "const": false},
                "errors": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "integer", "minimum": 1000}, "message": {"type": "string"},
                                   "error_chain": {"type": "array", "items": {"type": "object"}}}}},
                "messages": {"type": "array", "maxItems": 0},
                "result": {"type": "null"}
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "culvert API (Cloudflare Tunnel compatible)", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"email": [], "key": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "email": {"type": "apiKey", "in": "header", "name": "X-Auth-Email"},
                "key": {"type": "apiKey", "in": "header", "name": "X-Auth-Key"}
            }
        }
    })
}

/// The document, built once.
pub fn document() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| build().to_string().into_bytes())
}

pub async fn serve() -> Response {
    json_response(StatusCode::OK, document().to_vec())
}
