//! Inspecting and building single Cap'n Proto RPC frames (`rpc.capnp`)
//! without an RPC system.
//!
//! The edge and connector run real RPC with `capnp-rpc`; this module is for
//! the pieces around it: a frame tap that logs message kinds, golden-transcript
//! tests, and fake peers that replay or craft the exact frames cloudflared
//! sends (Bootstrap, pipelined Call, Finish, Release, Abort; see
//! edge-protocol.md §3.1 and the transcripts README).
//!
//! Not provided: a Return carrying the bootstrap capability, since writing a
//! capability pointer needs an RPC cap table; replay the recorded bytes.

use capnp::message;

use crate::error::{DecodeError, text};
use crate::framing::{self, Limits};
use crate::registration::{
    ConnectionResponse, Method, RegisterConnectionParams, RegisterUdpSessionParams,
    RegisterUdpSessionResponse, UnregisterUdpSessionParams, UpdateConfigurationParams,
    UpdateConfigurationResponse, UpdateLocalConfigurationParams,
};
use crate::schema::rpc_capnp as r;
use crate::schema::tunnelrpc_capnp as t;

/// Whom a Call is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A capability the receiver exported earlier (e.g. the bootstrap cap).
    ImportedCap(u32),
    /// The (future) answer to a question; cloudflared pipelines its first
    /// call on the bootstrap question this way. `transform_len` counts the
    /// pointer-path ops (always 0 here).
    PromisedAnswer {
        question_id: u32,
        transform_len: u32,
    },
}

/// How a Return ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnKind {
    Results {
        cap_table_len: u32,
    },
    Exception {
        reason: String,
    },
    Canceled,
    /// `resultsSentElsewhere`, `takeFromOtherQuestion`, `acceptFromThirdParty`.
    Other,
}

/// A one-line view of an RPC frame, for taps, logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcSummary {
    Bootstrap {
        question_id: u32,
    },
    Call {
        question_id: u32,
        target: Target,
        interface_id: u64,
        method_id: u16,
        /// `None` for methods outside tunnelrpc.
        method: Option<Method>,
    },
    Return {
        answer_id: u32,
        release_param_caps: bool,
        kind: ReturnKind,
    },
    Finish {
        question_id: u32,
        release_result_caps: bool,
    },
    Release {
        id: u32,
        reference_count: u32,
    },
    Abort {
        reason: String,
    },
    /// Resolve, Disembargo, Unimplemented, … (not used by cloudflared).
    Other {
        which: u16,
    },
}

impl RpcSummary {
    pub fn read_from(m: r::message::Reader<'_>) -> Result<Self, DecodeError> {
        use r::message::Which as W;
        Ok(match m.which()? {
            W::Bootstrap(b) => RpcSummary::Bootstrap {
                question_id: b?.get_question_id(),
            },
            W::Call(c) => {
                let c = c?;
                let (interface_id, method_id) = (c.get_interface_id(), c.get_method_id());
                RpcSummary::Call {
                    question_id: c.get_question_id(),
                    target: read_target(c.get_target()?)?,
                    interface_id,
                    method_id,
                    method: Method::from_ids(interface_id, method_id),
                }
            }
            W::Return(ret) => {
                let ret = ret?;
                use r::return_::Which as R;
                let kind = match ret.which()? {
                    R::Results(p) => ReturnKind::Results {
                        cap_table_len: p?.get_cap_table()?.len(),
                    },
                    R::Exception(e) => ReturnKind::Exception {
                        reason: text(e?.get_reason())?,
                    },
                    R::Canceled(()) => ReturnKind::Canceled,
                    _ => ReturnKind::Other,
                };
                RpcSummary::Return {
                    answer_id: ret.get_answer_id(),
                    release_param_caps: ret.get_release_param_caps(),
                    kind,
                }
            }
            W::Finish(f) => {
                let f = f?;
                RpcSummary::Finish {
                    question_id: f.get_question_id(),
                    release_result_caps: f.get_release_result_caps(),
                }
            }
            W::Release(x) => {
                let x = x?;
                RpcSummary::Release {
                    id: x.get_id(),
                    reference_count: x.get_reference_count(),
                }
            }
            W::Abort(e) => RpcSummary::Abort {
                reason: text(e?.get_reason())?,
            },
            W::Unimplemented(_) => RpcSummary::Other { which: 0 },
            W::Resolve(_) => RpcSummary::Other { which: 5 },
            W::ObsoleteSave(_) => RpcSummary::Other { which: 7 },
            W::ObsoleteDelete(_) => RpcSummary::Other { which: 9 },
            W::Provide(_) => RpcSummary::Other { which: 10 },
            W::Accept(_) => RpcSummary::Other { which: 11 },
            W::Join(_) => RpcSummary::Other { which: 12 },
            W::Disembargo(_) => RpcSummary::Other { which: 13 },
        })
    }

    /// Summarises the framed RPC message at the start of `buf`.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((msg, used)) = framing::decode_message(buf, limits)? else {
            return Ok(None);
        };
        Ok(Some((Self::read_from(msg.get_root()?)?, used)))
    }
}

fn read_target(t: r::message_target::Reader<'_>) -> Result<Target, DecodeError> {
    use r::message_target::Which;
    Ok(match t.which()? {
        Which::ImportedCap(id) => Target::ImportedCap(id),
        Which::PromisedAnswer(p) => {
            let p = p?;
            Target::PromisedAnswer {
                question_id: p.get_question_id(),
                transform_len: p.get_transform()?.len(),
            }
        }
    })
}

/// The parameters of a tunnelrpc call, by method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelCall {
    RegisterConnection(RegisterConnectionParams),
    UnregisterConnection,
    UpdateLocalConfiguration(UpdateLocalConfigurationParams),
    RegisterUdpSession(RegisterUdpSessionParams),
    UnregisterUdpSession(UnregisterUdpSessionParams),
    UpdateConfiguration(UpdateConfigurationParams),
}

impl TunnelCall {
    pub fn method(&self) -> Method {
        match self {
            TunnelCall::RegisterConnection(_) => Method::RegisterConnection,
            TunnelCall::UnregisterConnection => Method::UnregisterConnection,
            TunnelCall::UpdateLocalConfiguration(_) => Method::UpdateLocalConfiguration,
            TunnelCall::RegisterUdpSession(_) => Method::RegisterUdpSession,
            TunnelCall::UnregisterUdpSession(_) => Method::UnregisterUdpSession,
            TunnelCall::UpdateConfiguration(_) => Method::UpdateConfiguration,
        }
    }

    /// Decodes a Call frame's params for a known method. Returns `Ok(None)`
    /// if the message is not a Call or the method is not a tunnelrpc one.
    pub fn read_call(
        m: r::message::Reader<'_>,
    ) -> Result<Option<(u32, Target, Self)>, DecodeError> {
        let r::message::Which::Call(c) = m.which()? else {
            return Ok(None);
        };
        let c = c?;
        let Some(method) = Method::from_ids(c.get_interface_id(), c.get_method_id()) else {
            return Ok(None);
        };
        let content = c.get_params()?.get_content();
        let call = match method {
            Method::RegisterConnection => TunnelCall::RegisterConnection(
                RegisterConnectionParams::read_from(content.get_as()?)?,
            ),
            Method::UnregisterConnection => TunnelCall::UnregisterConnection,
            Method::UpdateLocalConfiguration => TunnelCall::UpdateLocalConfiguration(
                UpdateLocalConfigurationParams::read_from(content.get_as()?)?,
            ),
            Method::RegisterUdpSession => TunnelCall::RegisterUdpSession(
                RegisterUdpSessionParams::read_from(content.get_as()?)?,
            ),
            Method::UnregisterUdpSession => TunnelCall::UnregisterUdpSession(
                UnregisterUdpSessionParams::read_from(content.get_as()?)?,
            ),
            Method::UpdateConfiguration => TunnelCall::UpdateConfiguration(
                UpdateConfigurationParams::read_from(content.get_as()?)?,
            ),
        };
        Ok(Some((
            c.get_question_id(),
            read_target(c.get_target()?)?,
            call,
        )))
    }

    /// Decodes a framed Call at the start of `buf` (see [`Self::read_call`]).
    #[allow(clippy::type_complexity)] // (question, target, call) plus bytes used
    pub fn decode(
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Option<(u32, Target, Self)>, usize)>, DecodeError> {
        let Some((msg, used)) = framing::decode_message(buf, limits)? else {
            return Ok(None);
        };
        Ok(Some((Self::read_call(msg.get_root()?)?, used)))
    }
}

/// The results of a tunnelrpc call (except the bootstrap capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelReturn {
    RegisterConnection(ConnectionResponse),
    UpdateConfiguration(UpdateConfigurationResponse),
    RegisterUdpSession(RegisterUdpSessionResponse),
    /// `unregisterConnection`, `updateLocalConfiguration`,
    /// `unregisterUdpSession`: empty results.
    Empty,
}

impl TunnelReturn {
    /// Decodes a Return frame as the results of `method` (the caller matches
    /// answer IDs to its questions). `Ok(None)`: not a Return with results.
    pub fn read_return(
        m: r::message::Reader<'_>,
        method: Method,
    ) -> Result<Option<(u32, Self)>, DecodeError> {
        let r::message::Which::Return(ret) = m.which()? else {
            return Ok(None);
        };
        let ret = ret?;
        let r::return_::Which::Results(p) = ret.which()? else {
            return Ok(None);
        };
        let content = p?.get_content();
        let v = match method {
            Method::RegisterConnection => TunnelReturn::RegisterConnection(
                ConnectionResponse::read_results(content.get_as()?)?,
            ),
            Method::UpdateConfiguration => TunnelReturn::UpdateConfiguration(
                UpdateConfigurationResponse::read_results(content.get_as()?)?,
            ),
            Method::RegisterUdpSession => TunnelReturn::RegisterUdpSession(
                RegisterUdpSessionResponse::read_results(content.get_as()?)?,
            ),
            _ => TunnelReturn::Empty,
        };
        Ok(Some((ret.get_answer_id(), v)))
    }
}

fn frame(
    build: impl FnOnce(r::message::Builder<'_>) -> Result<(), DecodeError>,
) -> Result<Vec<u8>, DecodeError> {
    let mut m = message::Builder::new_default();
    build(m.init_root())?;
    Ok(framing::encode_message(&m))
}

fn infallible(v: Result<Vec<u8>, DecodeError>) -> Vec<u8> {
    // The builders below only fail on > 2^32-element lists; return the
    // empty frame rather than panic.
    v.unwrap_or_default()
}

/// `Bootstrap{questionId}`.
pub fn encode_bootstrap(question_id: u32) -> Vec<u8> {
    infallible(frame(|m| {
        m.init_bootstrap().set_question_id(question_id);
        Ok(())
    }))
}

/// `Call{questionId, target, interface, method, params}` with results sent
/// to the caller and an empty cap table.
pub fn encode_call(
    question_id: u32,
    target: Target,
    call: &TunnelCall,
) -> Result<Vec<u8>, DecodeError> {
    frame(|m| {
        let mut c = m.init_call();
        c.set_question_id(question_id);
        let (iface, method) = call.method().ids();
        c.set_interface_id(iface);
        c.set_method_id(method);
        let mut tb = c.reborrow().init_target();
        match target {
            Target::ImportedCap(id) => tb.set_imported_cap(id),
            Target::PromisedAnswer { question_id, .. } => {
                let mut p = tb.init_promised_answer();
                p.set_question_id(question_id);
                p.init_transform(0);
            }
        }
        c.reborrow().init_send_results_to().set_caller(());
        let mut params = c.init_params();
        params.reborrow().init_cap_table(0);
        let content = params.init_content();
        match call {
            TunnelCall::RegisterConnection(p) => p.write_to(
                content
                    .init_as::<t::registration_server::register_connection_params::Builder<'_>>(),
            )?,
            TunnelCall::UnregisterConnection => {
                content
                    .init_as::<t::registration_server::unregister_connection_params::Builder<'_>>();
            }
            TunnelCall::UpdateLocalConfiguration(p) => p.write_to(content.init_as()),
            TunnelCall::RegisterUdpSession(p) => p.write_to(content.init_as()),
            TunnelCall::UnregisterUdpSession(p) => p.write_to(content.init_as()),
            TunnelCall::UpdateConfiguration(p) => p.write_to(content.init_as()),
        }
        Ok(())
    })
}

/// `Return{answerId, results}` for a tunnelrpc method.
pub fn encode_return(answer_id: u32, release_param_caps: bool, ret: &TunnelReturn) -> Vec<u8> {
    infallible(frame(|m| {
        let mut rb = m.init_return();
        rb.set_answer_id(answer_id);
        rb.set_release_param_caps(release_param_caps);
        let mut p = rb.init_results();
        p.reborrow().init_cap_table(0);
        let content = p.init_content();
        match ret {
            TunnelReturn::RegisterConnection(c) => c.write_results(content.init_as()),
            TunnelReturn::UpdateConfiguration(c) => c.write_results(content.init_as()),
            TunnelReturn::RegisterUdpSession(c) => c.write_results(content.init_as()),
            TunnelReturn::Empty => {
                content
                    .init_as::<t::registration_server::unregister_connection_results::Builder<'_>>(
                    );
            }
        }
        Ok(())
    }))
}

/// `Finish{questionId, releaseResultCaps}`.
pub fn encode_finish(question_id: u32, release_result_caps: bool) -> Vec<u8> {
    infallible(frame(|m| {
        let mut f = m.init_finish();
        f.set_question_id(question_id);
        f.set_release_result_caps(release_result_caps);
        Ok(())
    }))
}

/// `Release{id, referenceCount}`.
pub fn encode_release(id: u32, reference_count: u32) -> Vec<u8> {
    infallible(frame(|m| {
        let mut x = m.init_release();
        x.set_id(id);
        x.set_reference_count(reference_count);
        Ok(())
    }))
}

/// `Abort{Exception{reason, type=failed}}`, e.g. cloudflared's "rpc: shutdown".
pub fn encode_abort(reason: &str) -> Vec<u8> {
    infallible(frame(|m| {
        let mut e = m.init_abort();
        e.set_reason(reason);
        e.set_type(r::exception::Type::Failed);
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::ConnectionDetails;
    use crate::testutil::unhex;
    use proptest::prelude::*;

    /// edge-protocol.md §3.1: cloudflared's Bootstrap, 48 bytes.
    const BOOTSTRAP: &str = "000000000500000000000000010001000800000000000000000000000100010000000000000000000000000000000000";

    #[test]
    fn bootstrap_vector() {
        let (s, used) = RpcSummary::decode(&unhex(BOOTSTRAP), &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(used, 48);
        assert_eq!(s, RpcSummary::Bootstrap { question_id: 0 });
    }

    #[test]
    fn call_and_return_round_trip() {
        let call = TunnelCall::RegisterConnection(crate::registration::tests::sample_params());
        let target = Target::PromisedAnswer {
            question_id: 0,
            transform_len: 0,
        };
        let bytes = encode_call(1, target, &call).unwrap();
        let (got, used) = TunnelCall::decode(&bytes, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(got, Some((1, target, call)));
        let (s, _) = RpcSummary::decode(&bytes, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert!(matches!(
            s,
            RpcSummary::Call {
                method: Some(Method::RegisterConnection),
                ..
            }
        ));

        let ret =
            TunnelReturn::RegisterConnection(ConnectionResponse::Details(ConnectionDetails {
                uuid: uuid::Uuid::from_u128(1),
                location_name: "LAB".into(),
                tunnel_is_remotely_managed: true,
            }));
        let bytes = encode_return(1, false, &ret);
        let (msg, _) = framing::decode_message(&bytes, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(
            TunnelReturn::read_return(msg.get_root().unwrap(), Method::RegisterConnection).unwrap(),
            Some((1, ret))
        );
    }

    #[test]
    fn small_frames() {
        let l = Limits::CONTROL_STREAM;
        let d = |b: Vec<u8>| RpcSummary::decode(&b, &l).unwrap().unwrap().0;
        assert_eq!(
            d(encode_finish(3, false)),
            RpcSummary::Finish {
                question_id: 3,
                release_result_caps: false
            }
        );
        assert_eq!(
            d(encode_release(0, 1)),
            RpcSummary::Release {
                id: 0,
                reference_count: 1
            }
        );
        assert_eq!(
            d(encode_abort("rpc: shutdown")),
            RpcSummary::Abort {
                reason: "rpc: shutdown".into()
            }
        );
    }

    proptest! {
        #[test]
        fn decoders_total(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let l = Limits::CONTROL_STREAM;
            let _ = RpcSummary::decode(&b, &l);
            let _ = TunnelCall::decode(&b, &l);
            if let Ok(Some((msg, _))) = framing::decode_message(&b, &l)
                && let Ok(root) = msg.get_root()
            {
                let _ = TunnelReturn::read_return(root, Method::RegisterConnection);
            }
        }

        /// Random bytes behind a valid Call header still decode totally.
        #[test]
        fn mutated_call_total(idx in 0usize..600, val in any::<u8>()) {
            let call = TunnelCall::RegisterConnection(crate::registration::tests::sample_params());
            let mut bytes = encode_call(1, Target::ImportedCap(0), &call).unwrap();
            let i = idx % bytes.len();
            bytes[i] = val;
            let _ = TunnelCall::decode(&bytes, &Limits::CONTROL_STREAM);
            let _ = RpcSummary::decode(&bytes, &Limits::CONTROL_STREAM);
        }
    }
}
