//! QUIC datagram codecs for UDP/ICMP proxying (edge-protocol.md §4.6).
//!
//! - v2 (cloudflared 2023.7.3 and default at HEAD): the type is the *last*
//!   byte; UDP sessions are registered over RPC (`registerUdpSession`).
//! - v3 (HEAD, feature `support_datagram_v3_2`): the type is the *first*
//!   byte and sessions are registered in-band.
//!
//! Datagrams are bounded by the QUIC datagram frame size, so decoding only
//! borrows from the input and never allocates.

use std::net::IpAddr;

use uuid::Uuid;

/// cloudflared's largest proxied UDP payload.
pub const MAX_UDP_PAYLOAD: usize = 1280;

/// A datagram we cannot parse. Not retryable; drop the datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown datagram type {0:#04x}")]
    UnknownType(u8),
    #[error("payload of {0} bytes exceeds {MAX_UDP_PAYLOAD}")]
    TooLarge(usize),
}

/// A v2 datagram, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramV2<'a> {
    /// Type 0: `payload ‖ session id (16) ‖ 0x00`.
    Udp { session_id: Uuid, payload: &'a [u8] },
    /// Type 1: `packet ‖ 0x01` (ICMP as raw IP packets).
    Ip(&'a [u8]),
    /// Type 2: `packet ‖ trace identity ‖ 0x02`. The identity layout is not
    /// verified (spec §10.8), so the bytes are returned unsplit.
    IpWithTrace(&'a [u8]),
    /// Type 3: tracing spans sent by cloudflared, unsplit.
    TracingSpan(&'a [u8]),
}

impl<'a> DatagramV2<'a> {
    pub fn decode(b: &'a [u8]) -> Result<Self, DatagramError> {
        let (&ty, rest) = b.split_last().ok_or(DatagramError::TooShort(0))?;
        Ok(match ty {
            0 => {
                let split = rest
                    .len()
                    .checked_sub(16)
                    .ok_or(DatagramError::TooShort(b.len()))?;
                let (payload, id) = rest.split_at(split);
                DatagramV2::Udp {
                    session_id: Uuid::from_slice(id)
                        .map_err(|_| DatagramError::TooShort(b.len()))?,
                    payload,
                }
            }
            1 => DatagramV2::Ip(rest),
            2 => DatagramV2::IpWithTrace(rest),
            3 => DatagramV2::TracingSpan(rest),
            t => return Err(DatagramError::UnknownType(t)),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let (body, suffix, ty): (&[u8], &[u8], u8) = match self {
            DatagramV2::Udp {
                session_id,
                payload,
            } => (payload, session_id.as_bytes(), 0),
            DatagramV2::Ip(p) => (p, &[], 1),
            DatagramV2::IpWithTrace(p) => (p, &[], 2),
            DatagramV2::TracingSpan(p) => (p, &[], 3),
        };
        let mut out = Vec::with_capacity(body.len() + suffix.len() + 1);
        out.extend_from_slice(body);
        out.extend_from_slice(suffix);
        out.push(ty);
        out
    }
}

/// v3 registration response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3ResponseCode {
    Ok,
    DestinationUnreachable,
    UnableToBindSocket,
    TooManyActiveFlows,
    /// 0xff: error with a message.
    ErrorWithMsg,
    Other(u8),
}

impl V3ResponseCode {
    fn from_u8(b: u8) -> Self {
        match b {
            0 => Self::Ok,
            1 => Self::DestinationUnreachable,
            2 => Self::UnableToBindSocket,
            3 => Self::TooManyActiveFlows,
            0xff => Self::ErrorWithMsg,
            x => Self::Other(x),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::DestinationUnreachable => 1,
            Self::UnableToBindSocket => 2,
            Self::TooManyActiveFlows => 3,
            Self::ErrorWithMsg => 0xff,
            Self::Other(x) => x,
        }
    }
}

const V3_FLAG_IPV6: u8 = 1;
const V3_FLAG_TRACED: u8 = 2;
const V3_FLAG_BUNDLED: u8 = 4;

/// A v3 datagram, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramV3<'a> {
    /// `0x00 [flags][port u16 BE][idle s u16 BE][request id 16][ip 4|16][payload?]`.
    Registration {
        request_id: [u8; 16],
        dst: IpAddr,
        dst_port: u16,
        idle_seconds: u16,
        traced: bool,
        /// Present when the bundled flag is set.
        payload: Option<&'a [u8]>,
    },
    /// `0x01 [request id 16][payload]`.
    Payload {
        request_id: [u8; 16],
        payload: &'a [u8],
    },
    /// `0x02 [raw IP packet]`.
    Icmp(&'a [u8]),
    /// `0x03 [code][request id 16][msg len u16 BE][msg]`.
    RegistrationResponse {
        code: V3ResponseCode,
        request_id: [u8; 16],
        message: &'a [u8],
    },
}

fn take<'a>(b: &mut &'a [u8], n: usize, total: usize) -> Result<&'a [u8], DatagramError> {
    if b.len() < n {
        return Err(DatagramError::TooShort(total));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn id16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    a
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl<'a> DatagramV3<'a> {
    pub fn decode(b: &'a [u8]) -> Result<Self, DatagramError> {
        let total = b.len();
        let (&ty, mut rest) = b.split_first().ok_or(DatagramError::TooShort(0))?;
        let r = &mut rest;
        Ok(match ty {
            0 => {
                let flags = take(r, 1, total)?[0];
                let dst_port = be16(take(r, 2, total)?);
                let idle_seconds = be16(take(r, 2, total)?);
                let request_id = id16(take(r, 16, total)?);
                let dst = if flags & V3_FLAG_IPV6 != 0 {
                    IpAddr::from(
                        <[u8; 16]>::try_from(take(r, 16, total)?)
                            .map_err(|_| DatagramError::TooShort(total))?,
                    )
                } else {
                    IpAddr::from(
                        <[u8; 4]>::try_from(take(r, 4, total)?)
                            .map_err(|_| DatagramError::TooShort(total))?,
                    )
                };
                DatagramV3::Registration {
                    request_id,
                    dst,
                    dst_port,
                    idle_seconds,
                    traced: flags & V3_FLAG_TRACED != 0,
                    payload: (flags & V3_FLAG_BUNDLED != 0).then_some(*r),
                }
            }
            1 => {
                let request_id = id16(take(r, 16, total)?);
                DatagramV3::Payload {
                    request_id,
                    payload: r,
                }
            }
            2 => DatagramV3::Icmp(r),
            3 => {
                let code = V3ResponseCode::from_u8(take(r, 1, total)?[0]);
                let request_id = id16(take(r, 16, total)?);
                let len = be16(take(r, 2, total)?) as usize;
                let message = take(r, len, total)?;
                DatagramV3::RegistrationResponse {
                    code,
                    request_id,
                    message,
                }
            }
            t => return Err(DatagramError::UnknownType(t)),
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, DatagramError> {
        let mut out = Vec::new();
        match self {
            DatagramV3::Registration {
                request_id,
                dst,
                dst_port,
                idle_seconds,
                traced,
                payload,
            } => {
                let mut flags = 0;
                if dst.is_ipv6() {
                    flags |= V3_FLAG_IPV6;
                }
                if *traced {
                    flags |= V3_FLAG_TRACED;
                }
                if payload.is_some() {
                    flags |= V3_FLAG_BUNDLED;
                }
                out.push(0);
                out.push(flags);
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&idle_seconds.to_be_bytes());
                out.extend_from_slice(request_id);
                match dst {
                    IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
                }
                if let Some(p) = payload {
                    out.extend_from_slice(p);
                }
            }
            DatagramV3::Payload {
                request_id,
                payload,
            } => {
                out.push(1);
                out.extend_from_slice(request_id);
                out.extend_from_slice(payload);
            }
            DatagramV3::Icmp(p) => {
                out.push(2);
                out.extend_from_slice(p);
            }
            DatagramV3::RegistrationResponse {
                code,
                request_id,
                message,
            } => {
                let len = u16::try_from(message.len())
                    .map_err(|_| DatagramError::TooLarge(message.len()))?;
                out.push(3);
                out.push(code.to_u8());
                out.extend_from_slice(request_id);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(message);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v2_udp() {
        let id = Uuid::from_u128(0x0102);
        let d = DatagramV2::Udp {
            session_id: id,
            payload: b"ping",
        };
        let b = d.encode();
        assert_eq!(&b[..4], b"ping");
        assert_eq!(&b[4..20], id.as_bytes());
        assert_eq!(b[20], 0);
        assert_eq!(DatagramV2::decode(&b).unwrap(), d);
        assert_eq!(
            DatagramV2::decode(&[1, 2, 0]),
            Err(DatagramError::TooShort(3))
        );
        assert_eq!(DatagramV2::decode(&[9]), Err(DatagramError::UnknownType(9)));
        assert_eq!(
            DatagramV2::decode(&[0x45, 1]).unwrap(),
            DatagramV2::Ip(&[0x45])
        );
    }

    #[test]
    fn v3_round_trips() {
        let rid = [7u8; 16];
        for d in [
            DatagramV3::Registration {
                request_id: rid,
                dst: "10.0.0.1".parse().unwrap(),
                dst_port: 53,
                idle_seconds: 30,
                traced: false,
                payload: Some(b"q"),
            },
            DatagramV3::Registration {
                request_id: rid,
                dst: "2001:db8::1".parse().unwrap(),
                dst_port: 443,
                idle_seconds: 5,
                traced: true,
                payload: None,
            },
            DatagramV3::Payload {
                request_id: rid,
                payload: b"data",
            },
            DatagramV3::Icmp(b"\x45"),
            DatagramV3::RegistrationResponse {
                code: V3ResponseCode::ErrorWithMsg,
                request_id: rid,
                message: b"nope",
            },
        ] {
            let b = d.encode().unwrap();
            assert_eq!(DatagramV3::decode(&b).unwrap(), d);
        }
        // Registration layout from the spec: type, flags, port BE, idle BE.
        let b = DatagramV3::Registration {
            request_id: rid,
            dst: "10.0.0.1".parse().unwrap(),
            dst_port: 0x0102,
            idle_seconds: 0x0304,
            traced: false,
            payload: None,
        }
        .encode()
        .unwrap();
        assert_eq!(&b[..6], &[0, 0, 1, 2, 3, 4]);
        assert_eq!(b.len(), 6 + 16 + 4);
    }

    proptest! {
        #[test]
        fn decoders_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(d) = DatagramV2::decode(&b) {
                prop_assert_eq!(d.encode(), b.clone());
            }
            if let Ok(d) = DatagramV3::decode(&b) {
                let _ = d.encode();
            }
        }
    }
}
