//! The CLI's error type: what went wrong, worded for the person at the terminal.

use std::fmt;
use std::path::PathBuf;

/// One `errors[]` item of a v4 envelope.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ApiErrorItem {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// The server's failure answer: HTTP status and its `errors[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub errors: Vec<ApiErrorItem>,
}

impl ApiFailure {
    /// Whether any error item carries `code`.
    pub fn has_code(&self, code: i64) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errors.is_empty() {
            return write!(f, "the API answered HTTP {} without details", self.status);
        }
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} (code {})", e.message.trim_end(), e.code)?;
        }
        write!(f, " [HTTP {}]", self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with a failure envelope.
    #[error("{context}: {failure}")]
    Api {
        context: String,
        failure: ApiFailure,
    },
    /// The request did not get an answer (connection refused, TLS, timeout).
    #[error("{context}: cannot reach the API at {url}: {source}")]
    Transport {
        context: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what the API promises (not JSON, wrong shape, too big).
    #[error("{context}: unexpected answer from the API (HTTP {status}): {detail}")]
    Protocol {
        context: String,
        status: u16,
        detail: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input or state on the user's side, with the message to print.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The API failure, if that is what this is.
    pub fn api_failure(&self) -> Option<&ApiFailure> {
        match self {
            CliError::Api { failure, .. } => Some(failure),
            _ => None,
        }
    }
}
