//! The tunnelrpc interfaces' parameters and results as plain Rust values,
//! with conversions to/from the generated capnp readers/builders
//! (edge-protocol.md §3.2–3.6, §4.6).
//!
//! An RPC system (capnp-rpc) hands a server method its params reader and a
//! results builder; `read_from`/`write_to` convert them. The interface and
//! method IDs are in [`ids`].

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use uuid::Uuid;

use crate::error::{DecodeError, text};
use crate::schema::tunnelrpc_capnp as s;

/// Interface IDs and method ordinals: the only schema facts on the wire.
pub mod ids {
    pub const REGISTRATION_SERVER: u64 = 0xf716_95ec_7fe8_5497;
    pub const SESSION_MANAGER: u64 = 0x8394_45a5_9fb0_1686;
    pub const CONFIGURATION_MANAGER: u64 = 0xb48e_dfbd_aa25_db04;
    pub const CLOUDFLARED_SERVER: u64 = 0xf548_cef9_dea2_a4a1;
    /// Legacy, never called by named tunnels; not in our schema.
    pub const TUNNEL_SERVER: u64 = 0xea58_385c_6541_6035;

    pub const REGISTER_CONNECTION: u16 = 0;
    pub const UNREGISTER_CONNECTION: u16 = 1;
    pub const UPDATE_LOCAL_CONFIGURATION: u16 = 2;
    pub const REGISTER_UDP_SESSION: u16 = 0;
    pub const UNREGISTER_UDP_SESSION: u16 = 1;
    pub const UPDATE_CONFIGURATION: u16 = 0;
}

/// A tunnelrpc method, identified by (interface ID, method ordinal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    RegisterConnection,
    UnregisterConnection,
    UpdateLocalConfiguration,
    RegisterUdpSession,
    UnregisterUdpSession,
    UpdateConfiguration,
}

impl Method {
    /// Resolves a call's target method. `CloudflaredServer` inherits the
    /// SessionManager/ConfigurationManager methods under their own IDs, so
    /// those are what callers use on the wire.
    pub fn from_ids(interface_id: u64, method_id: u16) -> Option<Method> {
        use ids::*;
        Some(match (interface_id, method_id) {
            (REGISTRATION_SERVER, REGISTER_CONNECTION) => Method::RegisterConnection,
            (REGISTRATION_SERVER, UNREGISTER_CONNECTION) => Method::UnregisterConnection,
            (REGISTRATION_SERVER, UPDATE_LOCAL_CONFIGURATION) => Method::UpdateLocalConfiguration,
            (SESSION_MANAGER, REGISTER_UDP_SESSION) => Method::RegisterUdpSession,
            (SESSION_MANAGER, UNREGISTER_UDP_SESSION) => Method::UnregisterUdpSession,
            (CONFIGURATION_MANAGER, UPDATE_CONFIGURATION) => Method::UpdateConfiguration,
            _ => return None,
        })
    }

    pub fn ids(self) -> (u64, u16) {
        use ids::*;
        match self {
            Method::RegisterConnection => (REGISTRATION_SERVER, REGISTER_CONNECTION),
            Method::UnregisterConnection => (REGISTRATION_SERVER, UNREGISTER_CONNECTION),
            Method::UpdateLocalConfiguration => (REGISTRATION_SERVER, UPDATE_LOCAL_CONFIGURATION),
            Method::RegisterUdpSession => (SESSION_MANAGER, REGISTER_UDP_SESSION),
            Method::UnregisterUdpSession => (SESSION_MANAGER, UNREGISTER_UDP_SESSION),
            Method::UpdateConfiguration => (CONFIGURATION_MANAGER, UPDATE_CONFIGURATION),
        }
    }
}

fn uuid_from(field: &'static str, b: &[u8]) -> Result<Uuid, DecodeError> {
    Uuid::from_slice(b)
        .map_err(|_| DecodeError::invalid(field, format!("{} bytes, want 16", b.len())))
}

/// 4 or 16 raw bytes; anything else yields `None` (the field is advisory and
/// must not fail a registration).
fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `TunnelAuth`: the account tag and the raw (not base64) tunnel secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TunnelAuth {
    pub account_tag: String,
    pub tunnel_secret: Vec<u8>,
}

// The secret must never reach logs.
impl fmt::Debug for TunnelAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelAuth")
            .field("account_tag", &self.account_tag)
            .field(
                "tunnel_secret",
                &format_args!("<{} bytes>", self.tunnel_secret.len()),
            )
            .finish()
    }
}

impl TunnelAuth {
    pub fn write_to(&self, mut b: s::tunnel_auth::Builder<'_>) {
        b.set_account_tag(self.account_tag.as_str());
        b.set_tunnel_secret(&self.tunnel_secret);
    }

    pub fn read_from(r: s::tunnel_auth::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(TunnelAuth {
            account_tag: text(r.get_account_tag())?,
            tunnel_secret: r.get_tunnel_secret()?.to_vec(),
        })
    }
}

/// Feature strings cloudflared advertises in `ClientInfo.features`.
pub mod features {
    pub const ALLOW_REMOTE_CONFIG: &str = "allow_remote_config";
    pub const SERIALIZED_HEADERS: &str = "serialized_headers";
    pub const SUPPORT_DATAGRAM_V2: &str = "support_datagram_v2";
    pub const SUPPORT_DATAGRAM_V3_2: &str = "support_datagram_v3_2";
    pub const SUPPORT_QUIC_EOF: &str = "support_quic_eof";
    pub const MANAGEMENT_LOGS: &str = "management_logs";
    pub const POST_QUANTUM: &str = "postquantum";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The connector ID, shared by all connections of one process.
    pub client_id: Uuid,
    /// Compare as a set: cloudflared's order varies between runs.
    pub features: Vec<String>,
    pub version: String,
    /// GOOS_GOARCH, e.g. `linux_amd64`.
    pub arch: String,
}

impl ClientInfo {
    pub fn has_feature(&self, f: &str) -> bool {
        self.features.iter().any(|x| x == f)
    }

    pub fn write_to(&self, mut b: s::client_info::Builder<'_>) -> Result<(), DecodeError> {
        b.set_client_id(self.client_id.as_bytes());
        let n = u32::try_from(self.features.len())
            .map_err(|_| DecodeError::invalid("features", "too many"))?;
        let mut list = b.reborrow().init_features(n);
        for (i, f) in self.features.iter().enumerate() {
            list.set(i as u32, f.as_str());
        }
        b.set_version(self.version.as_str());
        b.set_arch(self.arch.as_str());
        Ok(())
    }

    pub fn read_from(r: s::client_info::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ClientInfo {
            client_id: uuid_from("clientId", r.get_client_id()?)?,
            features: r
                .get_features()?
                .iter()
                .map(text)
                .collect::<Result<_, _>>()?,
            version: text(r.get_version())?,
            arch: text(r.get_arch())?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub client: ClientInfo,
    /// Over QUIC cloudflared sends the *edge* address it dialled; over HTTP/2
    /// its own local address. IPv4 arrives IPv4-mapped in 16 bytes.
    pub origin_local_ip: Option<IpAddr>,
    pub replace_existing: bool,
    pub compression_quality: u8,
    /// This connection's retry count.
    pub num_previous_attempts: u8,
}

impl ConnectionOptions {
    pub fn write_to(&self, mut b: s::connection_options::Builder<'_>) -> Result<(), DecodeError> {
        self.client.write_to(b.reborrow().init_client())?;
        if let Some(ip) = &self.origin_local_ip {
            b.set_origin_local_ip(&ip_bytes(ip));
        }
        b.set_replace_existing(self.replace_existing);
        b.set_compression_quality(self.compression_quality);
        b.set_num_previous_attempts(self.num_previous_attempts);
        Ok(())
    }

    pub fn read_from(r: s::connection_options::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectionOptions {
            client: ClientInfo::read_from(r.get_client()?)?,
            origin_local_ip: ip_from(r.get_origin_local_ip()?),
            replace_existing: r.get_replace_existing(),
            compression_quality: r.get_compression_quality(),
            num_previous_attempts: r.get_num_previous_attempts(),
        })
    }
}

/// `RegistrationServer.registerConnection` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConnectionParams {
    pub auth: TunnelAuth,
    pub tunnel_id: Uuid,
    /// HA slot, 0..N-1.
    pub conn_index: u8,
    pub options: ConnectionOptions,
}

impl RegisterConnectionParams {
    pub fn write_to(
        &self,
        mut b: s::registration_server::register_connection_params::Builder<'_>,
    ) -> Result<(), DecodeError> {
        self.auth.write_to(b.reborrow().init_auth());
        b.set_tunnel_id(self.tunnel_id.as_bytes());
        b.set_conn_index(self.conn_index);
        self.options.write_to(b.init_options())
    }

    pub fn read_from(
        r: s::registration_server::register_connection_params::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Ok(RegisterConnectionParams {
            auth: TunnelAuth::read_from(r.get_auth()?)?,
            tunnel_id: uuid_from("tunnelId", r.get_tunnel_id()?)?,
            conn_index: r.get_conn_index(),
            options: ConnectionOptions::read_from(r.get_options()?)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionDetails {
    /// The connection ID cloudflared logs as `connection=`.
    pub uuid: Uuid,
    /// Colo name, logged as `location=`.
    pub location_name: String,
    /// True: the edge will push configuration. False: connection 0 uploads
    /// its local configuration with `updateLocalConfiguration`.
    pub tunnel_is_remotely_managed: bool,
}

impl ConnectionDetails {
    pub fn write_to(&self, mut b: s::connection_details::Builder<'_>) {
        b.set_uuid(self.uuid.as_bytes());
        b.set_location_name(self.location_name.as_str());
        b.set_tunnel_is_remotely_managed(self.tunnel_is_remotely_managed);
    }

    pub fn read_from(r: s::connection_details::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectionDetails {
            uuid: uuid_from("uuid", r.get_uuid()?)?,
            location_name: text(r.get_location_name())?,
            tunnel_is_remotely_managed: r.get_tunnel_is_remotely_managed(),
        })
    }
}

/// What a connector should do after a refused registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAdvice {
    /// `EDUPCONN`: this edge address already has the connection; try another.
    OtherAddress,
    /// Retrying later can succeed (`shouldRetry`, or an `Unauthorized:` cause
    /// that a token rotation or tunnel creation may cure). `retryAfter` is a
    /// hint; cloudflared ignores it and uses its own backoff.
    Backoff(Option<Duration>),
    /// The edge says retrying will not help.
    Permanent,
}

/// A registration refusal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionError {
    pub cause: String,
    /// Nanoseconds (Go `time.Duration`).
    pub retry_after_ns: i64,
    pub should_retry: bool,
}

impl ConnectionError {
    /// cause for "already connected to this server".
    pub const DUPLICATE_CONNECTION: &'static str = "EDUPCONN";
    /// cause for a wrong secret/account (as Cloudflare's edge words it).
    pub const INVALID_SECRET: &'static str = "Unauthorized: Invalid tunnel secret";
    /// cause for an unknown or deleted tunnel.
    pub const UNKNOWN_TUNNEL: &'static str = "Unauthorized: Failed to get tunnel";

    /// A refusal the connector may retry with backoff. Note cloudflared's
    /// first connection exits on any cause without `Unauthorized`, whatever
    /// `shouldRetry` says (edge-protocol.md §7).
    pub fn retryable(cause: impl Into<String>, retry_after: Duration) -> Self {
        ConnectionError {
            cause: cause.into(),
            retry_after_ns: i64::try_from(retry_after.as_nanos()).unwrap_or(i64::MAX),
            should_retry: true,
        }
    }

    pub fn permanent(cause: impl Into<String>) -> Self {
        ConnectionError {
            cause: cause.into(),
            retry_after_ns: 0,
            should_retry: false,
        }
    }

    pub fn is_duplicate_connection(&self) -> bool {
        self.cause == Self::DUPLICATE_CONNECTION
    }

    /// cloudflared keeps retrying forever on causes containing "Unauthorized".
    pub fn is_unauthorized(&self) -> bool {
        self.cause.contains("Unauthorized")
    }

    pub fn retry_after(&self) -> Option<Duration> {
        u64::try_from(self.retry_after_ns)
            .ok()
            .filter(|&n| n > 0)
            .map(Duration::from_nanos)
    }

    pub fn retry_advice(&self) -> RetryAdvice {
        if self.is_duplicate_connection() {
            RetryAdvice::OtherAddress
        } else if self.should_retry || self.is_unauthorized() {
            RetryAdvice::Backoff(self.retry_after())
        } else {
            RetryAdvice::Permanent
        }
    }

    pub fn write_to(&self, mut b: s::connection_error::Builder<'_>) {
        b.set_cause(self.cause.as_str());
        b.set_retry_after(self.retry_after_ns);
        b.set_should_retry(self.should_retry);
    }

    pub fn read_from(r: s::connection_error::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectionError {
            cause: text(r.get_cause())?,
            retry_after_ns: r.get_retry_after(),
            should_retry: r.get_should_retry(),
        })
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registration refused: {}", self.cause)
    }
}

impl std::error::Error for ConnectionError {}

/// `ConnectionResponse.result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionResponse {
    Error(ConnectionError),
    Details(ConnectionDetails),
}

impl ConnectionResponse {
    pub fn write_to(&self, b: s::connection_response::Builder<'_>) {
        let r = b.init_result();
        match self {
            ConnectionResponse::Error(e) => e.write_to(r.init_error()),
            ConnectionResponse::Details(d) => d.write_to(r.init_connection_details()),
        }
    }

    pub fn read_from(r: s::connection_response::Reader<'_>) -> Result<Self, DecodeError> {
        use s::connection_response::result::Which;
        Ok(match r.get_result().which()? {
            Which::Error(e) => ConnectionResponse::Error(ConnectionError::read_from(e?)?),
            Which::ConnectionDetails(d) => {
                ConnectionResponse::Details(ConnectionDetails::read_from(d?)?)
            }
        })
    }

    /// Writes the `registerConnection` results struct.
    pub fn write_results(
        &self,
        b: s::registration_server::register_connection_results::Builder<'_>,
    ) {
        self.write_to(b.init_result());
    }

    pub fn read_results(
        r: s::registration_server::register_connection_results::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Self::read_from(r.get_result()?)
    }
}

/// `updateLocalConfiguration(config)`: the connector's local config JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateLocalConfigurationParams {
    pub config: Vec<u8>,
}

impl UpdateLocalConfigurationParams {
    pub fn write_to(
        &self,
        mut b: s::registration_server::update_local_configuration_params::Builder<'_>,
    ) {
        b.set_config(&self.config);
    }

    pub fn read_from(
        r: s::registration_server::update_local_configuration_params::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Ok(UpdateLocalConfigurationParams {
            config: r.get_config()?.to_vec(),
        })
    }
}

/// `ConfigurationManager.updateConfiguration(version, config)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfigurationParams {
    pub version: i32,
    /// Remote configuration JSON (edge-protocol.md §3.6).
    pub config: Vec<u8>,
}

impl UpdateConfigurationParams {
    pub fn write_to(
        &self,
        mut b: s::configuration_manager::update_configuration_params::Builder<'_>,
    ) {
        b.set_version(self.version);
        b.set_config(&self.config);
    }

    pub fn read_from(
        r: s::configuration_manager::update_configuration_params::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Ok(UpdateConfigurationParams {
            version: r.get_version(),
            config: r.get_config()?.to_vec(),
        })
    }
}

/// Result of a config push. cloudflared ignores pushes with a version not
/// above its current one and reports the version it has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateConfigurationResponse {
    pub latest_applied_version: i32,
    /// Empty on success.
    pub err: String,
}

impl UpdateConfigurationResponse {
    pub fn write_to(&self, mut b: s::update_configuration_response::Builder<'_>) {
        b.set_latest_applied_version(self.latest_applied_version);
        if !self.err.is_empty() {
            b.set_err(self.err.as_str());
        }
    }

    pub fn read_from(r: s::update_configuration_response::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(UpdateConfigurationResponse {
            latest_applied_version: r.get_latest_applied_version(),
            err: text(r.get_err())?,
        })
    }

    pub fn write_results(
        &self,
        b: s::configuration_manager::update_configuration_results::Builder<'_>,
    ) {
        self.write_to(b.init_result());
    }

    pub fn read_results(
        r: s::configuration_manager::update_configuration_results::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Self::read_from(r.get_result()?)
    }
}

/// `SessionManager.registerUdpSession` (datagram v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterUdpSessionParams {
    pub session_id: Uuid,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// Nanoseconds.
    pub close_after_idle_hint_ns: i64,
    pub trace_context: String,
}

impl RegisterUdpSessionParams {
    pub fn write_to(&self, mut b: s::session_manager::register_udp_session_params::Builder<'_>) {
        b.set_session_id(self.session_id.as_bytes());
        b.set_dst_ip(&ip_bytes(&self.dst_ip));
        b.set_dst_port(self.dst_port);
        b.set_close_after_idle_hint(self.close_after_idle_hint_ns);
        if !self.trace_context.is_empty() {
            b.set_trace_context(self.trace_context.as_str());
        }
    }

    pub fn read_from(
        r: s::session_manager::register_udp_session_params::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        let ip = r.get_dst_ip()?;
        Ok(RegisterUdpSessionParams {
            session_id: uuid_from("sessionId", r.get_session_id()?)?,
            dst_ip: ip_from(ip)
                .ok_or_else(|| DecodeError::invalid("dstIp", format!("{} bytes", ip.len())))?,
            dst_port: r.get_dst_port(),
            close_after_idle_hint_ns: r.get_close_after_idle_hint(),
            trace_context: text(r.get_trace_context())?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterUdpSessionResponse {
    /// Empty on success.
    pub err: String,
    /// Tracing spans (protobuf), usually empty.
    pub spans: Vec<u8>,
}

impl RegisterUdpSessionResponse {
    pub fn write_to(&self, mut b: s::register_udp_session_response::Builder<'_>) {
        if !self.err.is_empty() {
            b.set_err(self.err.as_str());
        }
        if !self.spans.is_empty() {
            b.set_spans(&self.spans);
        }
    }

    pub fn read_from(r: s::register_udp_session_response::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(RegisterUdpSessionResponse {
            err: text(r.get_err())?,
            spans: r.get_spans()?.to_vec(),
        })
    }

    pub fn write_results(&self, b: s::session_manager::register_udp_session_results::Builder<'_>) {
        self.write_to(b.init_result());
    }

    pub fn read_results(
        r: s::session_manager::register_udp_session_results::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Self::read_from(r.get_result()?)
    }
}

/// `SessionManager.unregisterUdpSession`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnregisterUdpSessionParams {
    pub session_id: Uuid,
    pub message: String,
}

impl UnregisterUdpSessionParams {
    pub fn write_to(&self, mut b: s::session_manager::unregister_udp_session_params::Builder<'_>) {
        b.set_session_id(self.session_id.as_bytes());
        b.set_message(self.message.as_str());
    }

    pub fn read_from(
        r: s::session_manager::unregister_udp_session_params::Reader<'_>,
    ) -> Result<Self, DecodeError> {
        Ok(UnregisterUdpSessionParams {
            session_id: uuid_from("sessionId", r.get_session_id()?)?,
            message: text(r.get_message())?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use capnp::message::Builder;
    use capnp::traits::HasTypeId;

    #[test]
    fn generated_ids_match_spec() {
        // edge-protocol.md §3.2/§3.3.
        assert_eq!(
            s::registration_server::Client::TYPE_ID,
            ids::REGISTRATION_SERVER
        );
        assert_eq!(s::session_manager::Client::TYPE_ID, ids::SESSION_MANAGER);
        assert_eq!(
            s::configuration_manager::Client::TYPE_ID,
            ids::CONFIGURATION_MANAGER
        );
        assert_eq!(
            s::cloudflared_server::Client::TYPE_ID,
            ids::CLOUDFLARED_SERVER
        );
        for (got, want) in [
            (s::tunnel_auth::Reader::TYPE_ID, 0x9496331ab9cd463f_u64),
            (s::client_info::Reader::TYPE_ID, 0x83ced0145b2f114b),
            (s::connection_options::Reader::TYPE_ID, 0xb4bf9861fe035d04),
            (s::connection_response::Reader::TYPE_ID, 0xdbaa9d03d52b62dc),
            (
                s::connection_response::result::Reader::TYPE_ID,
                0x97b3c5c260257622,
            ),
            (s::connection_error::Reader::TYPE_ID, 0xf5f383d2785edb86),
            (s::connection_details::Reader::TYPE_ID, 0xb5f39f082b9ac18a),
            (
                s::registration_server::register_connection_params::Reader::TYPE_ID,
                0xe6646dec8feaa6ee,
            ),
            (
                s::registration_server::register_connection_results::Reader::TYPE_ID,
                0xea50d822450d1f17,
            ),
            (
                s::registration_server::update_local_configuration_params::Reader::TYPE_ID,
                0xc5d6e311876a3604,
            ),
            (
                s::register_udp_session_response::Reader::TYPE_ID,
                0xab6d5210c1f26687,
            ),
            (
                s::session_manager::register_udp_session_params::Reader::TYPE_ID,
                0x904e297b87fbecea,
            ),
            (
                s::session_manager::unregister_udp_session_params::Reader::TYPE_ID,
                0x96b74375ce9b0ef6,
            ),
            (
                s::update_configuration_response::Reader::TYPE_ID,
                0xdb58ff694ba05cf9,
            ),
            (
                s::configuration_manager::update_configuration_params::Reader::TYPE_ID,
                0xb177ca2526a3ca76,
            ),
        ] {
            assert_eq!(got, want, "{want:#x}");
        }
        use crate::schema::quic_metadata_protocol_capnp as q;
        assert_eq!(q::connect_request::Reader::TYPE_ID, 0xc47116a1045e4061);
        assert_eq!(q::metadata::Reader::TYPE_ID, 0xe1446b97bfd1cd37);
        assert_eq!(q::connect_response::Reader::TYPE_ID, 0xb1032ec91cef8727);
    }

    #[test]
    fn method_ids() {
        for m in [
            Method::RegisterConnection,
            Method::UnregisterConnection,
            Method::UpdateLocalConfiguration,
            Method::RegisterUdpSession,
            Method::UnregisterUdpSession,
            Method::UpdateConfiguration,
        ] {
            let (i, n) = m.ids();
            assert_eq!(Method::from_ids(i, n), Some(m));
        }
        assert_eq!(Method::from_ids(ids::TUNNEL_SERVER, 0), None);
    }

    pub fn sample_params() -> RegisterConnectionParams {
        RegisterConnectionParams {
            auth: TunnelAuth {
                account_tag: "0123456789abcdef0123456789abcdef".into(),
                tunnel_secret: (0u8..32).collect(),
            },
            tunnel_id: Uuid::parse_str("5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c").unwrap(),
            conn_index: 2,
            options: ConnectionOptions {
                client: ClientInfo {
                    client_id: Uuid::from_u128(7),
                    features: vec![features::SERIALIZED_HEADERS.into()],
                    version: "culvert/0.1".into(),
                    arch: "linux_amd64".into(),
                },
                origin_local_ip: Some("::ffff:127.0.0.1".parse().unwrap()),
                replace_existing: false,
                compression_quality: 0,
                num_previous_attempts: 3,
            },
        }
    }

    #[test]
    fn round_trips() {
        let p = sample_params();
        let mut m = Builder::new_default();
        p.write_to(m.init_root()).unwrap();
        assert_eq!(
            RegisterConnectionParams::read_from(m.get_root_as_reader().unwrap()).unwrap(),
            p
        );

        for resp in [
            ConnectionResponse::Details(ConnectionDetails {
                uuid: Uuid::from_u128(9),
                location_name: "LAB".into(),
                tunnel_is_remotely_managed: true,
            }),
            ConnectionResponse::Error(ConnectionError::retryable(
                ConnectionError::INVALID_SECRET,
                Duration::from_secs(3),
            )),
        ] {
            let mut m = Builder::new_default();
            resp.write_results(m.init_root());
            assert_eq!(
                ConnectionResponse::read_results(m.get_root_as_reader().unwrap()).unwrap(),
                resp
            );
        }

        let u = RegisterUdpSessionParams {
            session_id: Uuid::from_u128(1),
            dst_ip: "10.0.0.1".parse().unwrap(),
            dst_port: 53,
            close_after_idle_hint_ns: 5_000_000_000,
            trace_context: String::new(),
        };
        let mut m = Builder::new_default();
        u.write_to(m.init_root());
        assert_eq!(
            RegisterUdpSessionParams::read_from(m.get_root_as_reader().unwrap()).unwrap(),
            u
        );
    }

    #[test]
    fn retry_advice() {
        assert_eq!(
            ConnectionError::permanent(ConnectionError::DUPLICATE_CONNECTION).retry_advice(),
            RetryAdvice::OtherAddress
        );
        assert_eq!(
            ConnectionError::permanent(ConnectionError::UNKNOWN_TUNNEL).retry_advice(),
            RetryAdvice::Backoff(None)
        );
        assert_eq!(
            ConnectionError::retryable("server busy", Duration::from_secs(3)).retry_advice(),
            RetryAdvice::Backoff(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            ConnectionError::permanent("nope").retry_advice(),
            RetryAdvice::Permanent
        );
    }

    #[test]
    fn secret_not_in_debug() {
        assert!(!format!("{:?}", sample_params()).contains("[0, 1, 2"));
    }
}
