//! Private files: origin certificates and tunnel credentials are secrets, so
//! they are created with mode 0600 and never exist with a looser mode, even
//! for a moment.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// Largest cert.pem, credentials or configuration file the CLI reads.
pub const MAX_FILE_LEN: u64 = 1024 * 1024;

/// The user's home directory (`$HOME`).
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Expands a leading `~/` as cloudflared does for its path flags.
pub fn expand_tilde(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

/// Reads a small text file (bounded by [`MAX_FILE_LEN`]).
pub fn read_small(path: &Path, what: &'static str) -> Result<String, CliError> {
    let f = std::fs::File::open(path).map_err(|e| CliError::io(what, path, e))?;
    let mut buf = String::new();
    f.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut buf)
        .map_err(|e| CliError::io(what, path, e))?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(CliError::usage(format!(
            "{} is larger than {MAX_FILE_LEN} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Writes `contents` to `path` with mode 0600 (via a temporary file and a
/// rename, so readers never see half a file). The parent directory is created
/// with mode 0700 if missing. With `overwrite == false` an existing file is
/// an error.
pub fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), CliError> {
    if !overwrite && path.exists() {
        return Err(CliError::usage(format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(parent)
            .map_err(|e| CliError::io("creating the directory", parent, e))?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::io("writing", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/x.json");
        write_private(&p, b"one", false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dmode = std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dmode & 0o777, 0o700);
        }
        let e = write_private(&p, b"two", false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        write_private(&p, b"two", true).unwrap();
        assert_eq!(read_small(&p, "reading").unwrap(), "two");
    }
}
