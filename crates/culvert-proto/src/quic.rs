//! QUIC transport parameters that culvert's edge and connector share.

/// Largest UDP payload either side accepts (advertised as the
/// `max_udp_payload_size` transport parameter): a 9000-byte jumbo frame less
/// the IPv4 and UDP headers. Peers only send this much after path MTU
/// discovery has proven the path carries it.
pub const MAX_UDP_PAYLOAD: u16 = 8972;

/// Ceiling for path MTU discovery (quinn counts UDP payload bytes): the
/// jumbo-frame payload less the extra 20 bytes of an IPv6 header. On an
/// ordinary 1500-byte path the probes above 1452 are lost and discovery
/// settles where cloudflared's would; on loopback and jumbo-frame networks
/// it grows, which cuts the per-packet cost (encryption set-up, headers,
/// acknowledgements) of bulk transfers about sixfold.
pub const MTU_UPPER_BOUND: u16 = MAX_UDP_PAYLOAD - 20;
