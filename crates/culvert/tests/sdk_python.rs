//! Compatibility with the official Cloudflare Python SDK: runs the pytest suite
//! in `tests/sdk/python` (at the workspace root) against the `culvert` binary
//! cargo built for this test.
//!
//! ```text
//! export CULVERT_SDK_PYTHON="$(scripts/setup-python-sdk.sh | tail -n1)"
//! export CULVERT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test   # optional
//! cargo test -p culvert --test sdk_python -- --nocapture
//! ```
//!
//! Without `CULVERT_SDK_PYTHON` the test prints why and passes (it needs a
//! virtualenv with the pinned SDK, which `scripts/setup-python-sdk.sh` makes).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context, Result, bail};

fn workspace_root() -> Result<PathBuf> {
    // crates/culvert -> the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .context("CARGO_MANIFEST_DIR has no grandparent")?;
    if !root.join("tests/sdk/python").is_dir() {
        bail!("{} has no tests/sdk/python", root.display());
    }
    Ok(root.to_path_buf())
}

/// Copies a child's stream to ours line by line (so `--nocapture` shows it live)
/// and returns everything it read.
fn pump<R: Read + Send + 'static>(stream: R, to_stderr: bool) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut all = String::new();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if to_stderr {
                        eprint!("{line}");
                    } else {
                        print!("{line}");
                    }
                    all.push_str(&line);
                }
            }
        }
        all
    })
}

#[test]
fn python_sdk_compatibility() -> Result<()> {
    let Some(python) = std::env::var_os("CULVERT_SDK_PYTHON").filter(|p| !p.is_empty()) else {
        println!("skipped: CULVERT_SDK_PYTHON not set (run scripts/setup-python-sdk.sh)");
        return Ok(());
    };
    let root = workspace_root()?;
    let culvert = env!("CARGO_BIN_EXE_culvert");

    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "tests/sdk/python",
    ])
    .current_dir(&root)
    .env("CULVERT_BIN", culvert)
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .env("PYTHONUNBUFFERED", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    match std::env::var("CULVERT_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => {
            cmd.env("CULVERT_TEST_POSTGRES_URL", url);
        }
        _ => {
            cmd.env_remove("CULVERT_TEST_POSTGRES_URL");
        }
    }
    println!(
        "running {} -m pytest -q tests/sdk/python in {} with CULVERT_BIN={culvert}",
        Path::new(&python).display(),
        root.display()
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", Path::new(&python).display()))?;
    let out = pump(child.stdout.take().context("no stdout")?, false);
    let err = pump(child.stderr.take().context("no stderr")?, true);
    let status = child.wait().context("waiting for pytest")?;
    let stdout = out.join().unwrap_or_default();
    let _ = err.join();

    if !status.success() {
        bail!("the Python SDK suite failed ({status}); see the pytest output above");
    }
    // pytest exits 0 only when tests ran; insist on at least one pass anyway.
    if !stdout.contains(" passed") {
        bail!("pytest succeeded but reported no passed test");
    }
    Ok(())
}
