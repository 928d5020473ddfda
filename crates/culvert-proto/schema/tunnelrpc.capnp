# culvert's reconstruction of cloudflared's tunnelrpc.capnp (the subset named
# tunnels use), written from shared/spec/edge-protocol.md §3.2/§3.3.
#
# Only interface IDs and method ordinals travel on the wire, but every ID
# below (file, structs, interfaces) is the one cloudflared's schema uses, and
# the implicit method param/result struct IDs derive from them, so generated
# type IDs match cloudflared's generated code. Do not rename methods or
# parameters: that would change the derived IDs.
#
# Left out on purpose: the deprecated TunnelServer interface (0xea58385c65416035)
# and its legacy structs, which named tunnels never call.
@0xdb8274f9144abc7e;

struct TunnelAuth @0x9496331ab9cd463f {
  accountTag @0 :Text;
  tunnelSecret @1 :Data;
}

struct ClientInfo @0x83ced0145b2f114b {
  # The connector ID: 16 raw UUID bytes, shared by all connections of a process.
  clientId @0 :Data;
  features @1 :List(Text);
  version @2 :Text;
  # GOOS_GOARCH, e.g. "linux_amd64".
  arch @3 :Text;
}

struct ConnectionOptions @0xb4bf9861fe035d04 {
  client @0 :ClientInfo;
  # 4 or 16 raw bytes.
  originLocalIp @1 :Data;
  replaceExisting @2 :Bool;
  compressionQuality @3 :UInt8;
  numPreviousAttempts @4 :UInt8;
}

struct ConnectionResponse @0xdbaa9d03d52b62dc {
  result :union {
    error @0 :ConnectionError;
    connectionDetails @1 :ConnectionDetails;
  }
}

struct ConnectionError @0xf5f383d2785edb86 {
  cause @0 :Text;
  # Nanoseconds.
  retryAfter @1 :Int64;
  shouldRetry @2 :Bool;
}

struct ConnectionDetails @0xb5f39f082b9ac18a {
  # 16 raw UUID bytes: the connection ID.
  uuid @0 :Data;
  locationName @1 :Text;
  tunnelIsRemotelyManaged @2 :Bool;
}

interface RegistrationServer @0xf71695ec7fe85497 {
  registerConnection @0 (auth :TunnelAuth, tunnelId :Data, connIndex :UInt8, options :ConnectionOptions) -> (result :ConnectionResponse);
  unregisterConnection @1 () -> ();
  updateLocalConfiguration @2 (config :Data) -> ();
}

struct RegisterUdpSessionResponse @0xab6d5210c1f26687 {
  err @0 :Text;
  spans @1 :Data;
}

interface SessionManager @0x839445a59fb01686 {
  # closeAfterIdleHint is in nanoseconds.
  registerUdpSession @0 (sessionId :Data, dstIp :Data, dstPort :UInt16, closeAfterIdleHint :Int64, traceContext :Text = "") -> (result :RegisterUdpSessionResponse);
  unregisterUdpSession @1 (sessionId :Data, message :Text) -> ();
}

struct UpdateConfigurationResponse @0xdb58ff694ba05cf9 {
  latestAppliedVersion @0 :Int32;
  err @1 :Text;
}

interface ConfigurationManager @0xb48edfbdaa25db04 {
  updateConfiguration @0 (version :Int32, config :Data) -> (result :UpdateConfigurationResponse);
}

# What cloudflared serves as bootstrap on RPC streams the edge opens.
interface CloudflaredServer @0xf548cef9dea2a4a1 extends(SessionManager, ConfigurationManager) {}
