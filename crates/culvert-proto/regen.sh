#!/usr/bin/env bash
# Regenerates the committed Cap'n Proto code in src/schema/ from schema/*.capnp
# and the standard rpc.capnp. Normal builds do not need this (or the capnp
# compiler); run it only after editing a schema.
#
# Needs: the `capnp` compiler and the standard schemas
#   (Debian: apt-get install -y capnproto libcapnp-dev), and cargo with access
#   to crates.io for the `capnpc` code generator.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
capnpc_version="0.27.0" # keep in step with the `capnp` runtime in Cargo.toml
rpc_schema="${CAPNP_RPC_SCHEMA:-/usr/include/capnp/rpc.capnp}"

command -v capnp >/dev/null || { echo "capnp compiler not found (apt-get install -y capnproto)" >&2; exit 1; }
[ -f "$rpc_schema" ] || { echo "$rpc_schema not found (apt-get install -y libcapnp-dev)" >&2; exit 1; }

# A throwaway generator crate outside the workspace, so the workspace never
# depends on capnpc.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cat >"$work/Cargo.toml" <<TOML
[package]
name = "culvert-proto-regen"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
capnpc = "=${capnpc_version}"
TOML
cat >"$work/src/main.rs" <<'RS'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (schema_dir, rpc_schema, out) = (&args[1], &args[2], &args[3]);
    let rpc_dir = std::path::Path::new(rpc_schema).parent().unwrap();
    capnpc::CompilerCommand::new()
        .src_prefix(schema_dir)
        .src_prefix(rpc_dir)
        .file(format!("{schema_dir}/tunnelrpc.capnp"))
        .file(format!("{schema_dir}/quic_metadata_protocol.capnp"))
        .file(rpc_schema)
        // Generated paths become crate::schema::<file>_capnp.
        .default_parent_module(vec!["schema".into()])
        .output_path(out)
        .run()
        .expect("capnp compile failed");
}
RS

out="$here/src/schema"
mkdir -p "$out"
CARGO_TARGET_DIR="$work/target" cargo run --quiet --manifest-path "$work/Cargo.toml" -- \
    "$here/schema" "$rpc_schema" "$out"
rustfmt --edition 2024 "$out"/tunnelrpc_capnp.rs "$out"/quic_metadata_protocol_capnp.rs "$out"/rpc_capnp.rs
echo "regenerated: $(cd "$out" && ls ./*_capnp.rs | tr '\n' ' ')"
