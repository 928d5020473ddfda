//! End-to-end tests of the edge over real QUIC/TLS on 127.0.0.1 with a real
//! SQLite store; a fake cloudflared replays the recorded 2023.7.3 bytes
//! (QUIC, and HTTP/2 over TLS/TCP).

mod harness;
mod http2;
mod lifecycle;
mod proxying;
mod push;
mod registration;
