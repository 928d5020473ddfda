//! Test helpers: hex and the recorded cloudflared transcripts.

use std::path::PathBuf;

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `testdata/cloudflared-2023.7.3` (a copy of shared/testdata) at the workspace root,
/// or via `CULVERT_TESTDATA`.
pub fn transcript_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CULVERT_TESTDATA") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("testdata/cloudflared-2023.7.3"))
        .find(|p| p.is_dir())
        .expect("transcripts not found: set CULVERT_TESTDATA to testdata/cloudflared-2023.7.3")
}

/// Loads one transcript.
pub fn transcript(name: &str) -> serde_json::Value {
    let raw = std::fs::read_to_string(transcript_dir().join(name)).expect("transcript readable");
    serde_json::from_str(&raw).expect("transcript JSON")
}

/// Events of a transcript matching a predicate.
pub fn events<'a>(
    t: &'a serde_json::Value,
    pred: impl Fn(&serde_json::Value) -> bool + 'a,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    t["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(move |e| pred(e))
}

pub fn event_bytes(e: &serde_json::Value) -> Vec<u8> {
    unhex(e["hex"].as_str().expect("hex"))
}
