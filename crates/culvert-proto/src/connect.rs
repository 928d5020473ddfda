//! `ConnectRequest` / `ConnectResponse`: the head of every QUIC data stream
//! (edge-protocol.md §4.2).
//!
//! The edge opens a bidi stream and writes preamble + `ConnectRequest` in one
//! write, then the request body; cloudflared answers with preamble +
//! `ConnectResponse`, then the response body. The decoders take a byte
//! buffer and report how many bytes the head used, so body bytes that
//! arrived in the same read are never lost.

use capnp::message;

use crate::error::{DecodeError, text};
use crate::framing::{self, Limits};
use crate::schema::quic_metadata_protocol_capnp as schema;
use crate::stream::{DATA_STREAM_PREAMBLE, parse_data_preamble};

/// What the stream carries after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    Http,
    Websocket,
    Tcp,
}

impl From<ConnectionType> for schema::ConnectionType {
    fn from(t: ConnectionType) -> Self {
        match t {
            ConnectionType::Http => schema::ConnectionType::Http,
            ConnectionType::Websocket => schema::ConnectionType::Websocket,
            ConnectionType::Tcp => schema::ConnectionType::Tcp,
        }
    }
}

impl From<schema::ConnectionType> for ConnectionType {
    fn from(t: schema::ConnectionType) -> Self {
        match t {
            schema::ConnectionType::Http => ConnectionType::Http,
            schema::ConnectionType::Websocket => ConnectionType::Websocket,
            schema::ConnectionType::Tcp => ConnectionType::Tcp,
        }
    }
}

/// One metadata key/value pair. Keys may repeat (multi-valued headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Metadata {
    pub key: String,
    pub val: String,
}

impl Metadata {
    pub fn new(key: impl Into<String>, val: impl Into<String>) -> Self {
        Metadata {
            key: key.into(),
            val: val.into(),
        }
    }
}

/// The edge's request to open a flow to an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Full URL for http/websocket, `ip:port` for tcp.
    pub dest: String,
    pub connection_type: ConnectionType,
    pub metadata: Vec<Metadata>,
}

/// The connector's answer. A non-empty `error` means the flow failed before
/// any response (the edge should answer 502).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectResponse {
    pub error: String,
    pub metadata: Vec<Metadata>,
}

fn write_metadata(
    mut list: capnp::struct_list::Builder<'_, schema::metadata::Owned>,
    metadata: &[Metadata],
) {
    for (i, m) in metadata.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_key(m.key.as_str());
        e.set_val(m.val.as_str());
    }
}

fn read_metadata(
    list: capnp::struct_list::Reader<'_, schema::metadata::Owned>,
) -> Result<Vec<Metadata>, DecodeError> {
    list.iter()
        .map(|m| {
            Ok(Metadata {
                key: text(m.get_key())?,
                val: text(m.get_val())?,
            })
        })
        .collect()
}

fn list_len(n: usize, field: &'static str) -> Result<u32, DecodeError> {
    u32::try_from(n).map_err(|_| DecodeError::invalid(field, "too many entries"))
}

impl ConnectRequest {
    pub fn write_to(&self, mut b: schema::connect_request::Builder<'_>) -> Result<(), DecodeError> {
        b.set_dest(self.dest.as_str());
        b.set_type(self.connection_type.into());
        let n = list_len(self.metadata.len(), "metadata")?;
        write_metadata(b.init_metadata(n), &self.metadata);
        Ok(())
    }

    pub fn read_from(r: schema::connect_request::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectRequest {
            dest: text(r.get_dest())?,
            connection_type: r.get_type()?.into(),
            metadata: read_metadata(r.get_metadata()?)?,
        })
    }

    /// The framed capnp message alone (no preamble).
    pub fn to_message_bytes(&self) -> Vec<u8> {
        let mut msg = message::Builder::new_default();
        // Only fails for > 2^32 metadata entries, which cannot be built in memory
        // on any real system; encode what we have rather than panic.
        let _ = self.write_to(msg.init_root());
        framing::encode_message(&msg)
    }

    /// Preamble + message, to be sent in a single write.
    pub fn encode(&self) -> Vec<u8> {
        with_preamble(self.to_message_bytes())
    }

    /// Decodes a framed message (no preamble) at the start of `buf`.
    /// `Ok(None)`: need more bytes. Otherwise also returns the bytes used.
    pub fn decode_message(
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((msg, used)) = framing::decode_message(buf, limits)? else {
            return Ok(None);
        };
        let req = Self::read_from(msg.get_root()?)?;
        Ok(Some((req, used)))
    }

    /// Decodes preamble + message at the start of a data stream; the bytes
    /// after the returned length are the request body.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Self, usize)>, DecodeError> {
        decode_with_preamble(buf, limits, Self::decode_message)
    }
}

impl ConnectResponse {
    /// A failed flow. cloudflared 2023.7.3 sends no metadata with an error;
    /// newer versions keep e.g. `HttpStatus=502`.
    pub fn error(msg: impl Into<String>) -> Self {
        ConnectResponse {
            error: msg.into(),
            metadata: Vec::new(),
        }
    }

    pub fn is_error(&self) -> bool {
        !self.error.is_empty()
    }

    pub fn write_to(
        &self,
        mut b: schema::connect_response::Builder<'_>,
    ) -> Result<(), DecodeError> {
        // cloudflared leaves `error` unset (null) on success; an empty Text
        // reads the same, but we match the recorded bytes exactly.
        if !self.error.is_empty() {
            b.set_error(self.error.as_str());
        }
        let n = list_len(self.metadata.len(), "metadata")?;
        if n > 0 {
            write_metadata(b.init_metadata(n), &self.metadata);
        }
        Ok(())
    }

    pub fn read_from(r: schema::connect_response::Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectResponse {
            error: text(r.get_error())?,
            metadata: read_metadata(r.get_metadata()?)?,
        })
    }

    /// The framed capnp message alone (no preamble).
    pub fn to_message_bytes(&self) -> Vec<u8> {
        let mut msg = message::Builder::new_default();
        let _ = self.write_to(msg.init_root());
        framing::encode_message(&msg)
    }

    /// Preamble + message, to be sent in a single write.
    pub fn encode(&self) -> Vec<u8> {
        with_preamble(self.to_message_bytes())
    }

    pub fn decode_message(
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((msg, used)) = framing::decode_message(buf, limits)? else {
            return Ok(None);
        };
        let resp = Self::read_from(msg.get_root()?)?;
        Ok(Some((resp, used)))
    }

    /// Decodes preamble + message; the bytes after the returned length are
    /// the response body.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Self, usize)>, DecodeError> {
        decode_with_preamble(buf, limits, Self::decode_message)
    }
}

fn with_preamble(msg: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_STREAM_PREAMBLE.len() + msg.len());
    out.extend_from_slice(&DATA_STREAM_PREAMBLE);
    out.extend_from_slice(&msg);
    out
}

type MessageDecoder<T> = fn(&[u8], &Limits) -> Result<Option<(T, usize)>, DecodeError>;

fn decode_with_preamble<T>(
    buf: &[u8],
    limits: &Limits,
    decode: MessageDecoder<T>,
) -> Result<Option<(T, usize)>, DecodeError> {
    let Some(pre) = parse_data_preamble(buf)? else {
        return Ok(None);
    };
    Ok(decode(&buf[pre..], limits)?.map(|(v, used)| (v, pre + used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::unhex;
    use proptest::prelude::*;

    // Byte vectors from edge-protocol.md §4.2 (generated with cloudflared 2023.7.3).
    const REQ_GET: &str = "0a36cd12a13e3031000000000c0000000000000001000200000000000000000005000000520000000900000017000000687474703a2f2f612f000000000000000400000000000200050000005a0000000900000022000000487474704d6574686f640000000000004745540000000000";
    const RESP_200: &str = "0a36cd12a13e303100000000090000000000000000000200000000000000000001000000170000000400000000000200050000005a0000000900000022000000487474705374617475730000000000003230300000000000";
    const RESP_BOOM: &str = "0a36cd12a13e303100000000040000000000000000000200050000002a0000000000000000000000626f6f6d00000000";

    #[test]
    fn spec_vectors_byte_exact() {
        let req = ConnectRequest {
            dest: "http://a/".into(),
            connection_type: ConnectionType::Http,
            metadata: vec![Metadata::new("HttpMethod", "GET")],
        };
        assert_eq!(req.encode(), unhex(REQ_GET));
        let resp = ConnectResponse {
            error: String::new(),
            metadata: vec![Metadata::new("HttpStatus", "200")],
        };
        assert_eq!(resp.encode(), unhex(RESP_200));
        assert_eq!(ConnectResponse::error("boom").encode(), unhex(RESP_BOOM));

        let (r, used) = ConnectRequest::decode(&unhex(REQ_GET), &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!((r, used), (req, unhex(REQ_GET).len()));
        let (r, _) = ConnectResponse::decode(&unhex(RESP_200), &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(r, resp);
        let (r, _) = ConnectResponse::decode(&unhex(RESP_BOOM), &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert!(r.is_error());
        assert_eq!(r.error, "boom");
    }

    #[test]
    fn body_bytes_are_left_alone() {
        let mut buf = unhex(REQ_GET);
        let head = buf.len();
        buf.extend_from_slice(b"body");
        let (_, used) = ConnectRequest::decode(&buf, &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(used, head);
        for cut in 0..head {
            assert!(
                ConnectRequest::decode(&buf[..cut], &Limits::DATA_STREAM)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn unknown_connection_type_is_an_error() {
        let mut buf = unhex(REQ_GET);
        // The data word of ConnectRequest holds `type` at byte 0 (offset 8
        // preamble + 8 table + 8 root pointer).
        buf[24] = 7;
        assert!(matches!(
            ConnectRequest::decode(&buf, &Limits::DATA_STREAM),
            Err(DecodeError::NotInSchema(7))
        ));
    }

    fn arb_meta() -> impl Strategy<Value = Vec<Metadata>> {
        proptest::collection::vec(
            (any::<String>(), any::<String>()).prop_map(|(k, v)| Metadata::new(k, v)),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn round_trip(dest in any::<String>(), t in 0u8..3, meta in arb_meta(), err in any::<String>()) {
            let connection_type = [ConnectionType::Http, ConnectionType::Websocket, ConnectionType::Tcp][t as usize];
            let req = ConnectRequest { dest, connection_type, metadata: meta.clone() };
            let enc = req.encode();
            prop_assert_eq!(ConnectRequest::decode(&enc, &Limits::DATA_STREAM).unwrap(), Some((req, enc.len())));
            let resp = ConnectResponse { error: err, metadata: meta };
            let enc = resp.encode();
            prop_assert_eq!(ConnectResponse::decode(&enc, &Limits::DATA_STREAM).unwrap(), Some((resp, enc.len())));
        }

        #[test]
        fn decoders_total(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ConnectRequest::decode_message(&b, &Limits::DATA_STREAM);
            let _ = ConnectResponse::decode_message(&b, &Limits::DATA_STREAM);
            let mut pre = DATA_STREAM_PREAMBLE.to_vec();
            pre.extend(&b);
            let _ = ConnectRequest::decode(&pre, &Limits::DATA_STREAM);
            let _ = ConnectResponse::decode(&pre, &Limits::DATA_STREAM);
        }
    }
}
