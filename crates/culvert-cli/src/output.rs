//! Output: aligned tables, human times, `-o json|yaml`, and progress lines
//! on a terminal.

use std::io::{IsTerminal as _, Write as _};

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::CliError;

/// `-o` / `--output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Yaml,
}

/// Machine-readable output of `value`.
pub fn render(value: &impl Serialize, format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::usage(format!("encoding JSON: {e}"))),
        OutputFormat::Yaml => {
            // Through serde_json::Value so that maps keep the API's key order.
            let v = serde_json::to_value(value)
                .map_err(|e| CliError::usage(format!("encoding YAML: {e}")))?;
            let mut y = serde_saphyr::to_string(&v)
                .map_err(|e| CliError::usage(format!("encoding YAML: {e}")))?;
            if !y.ends_with('\n') {
                y.push('\n');
            }
            Ok(y)
        }
    }
}

/// "just now", "5 seconds ago", "1 minute ago", "3 days ago", "in 2 hours".
pub fn human_time(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - t).whole_seconds();
    let (n, future) = if secs < 0 {
        (secs.unsigned_abs(), true)
    } else {
        (secs as u64, false)
    };
    if n < 2 {
        return "just now".into();
    }
    let (count, unit) = match n {
        0..60 => (n, "second"),
        60..3600 => (n / 60, "minute"),
        3600..86_400 => (n / 3600, "hour"),
        86_400..2_592_000 => (n / 86_400, "day"),
        2_592_000..31_536_000 => (n / 2_592_000, "month"),
        _ => (n / 31_536_000, "year"),
    };
    let plural = if count == 1 { "" } else { "s" };
    if future {
        format!("in {count} {unit}{plural}")
    } else {
        format!("{count} {unit}{plural} ago")
    }
}

/// An aligned text table: columns separated by at least two spaces, no
/// trailing whitespace.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `[3/10] deleting foo` on stderr, rewritten in place, only when stderr is a
/// terminal (scripts and logs get no progress noise).
pub struct Progress {
    total: usize,
    done: usize,
    enabled: bool,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            enabled: total > 1 && std::io::stderr().is_terminal(),
        }
    }

    pub fn step(&mut self, what: &str) {
        self.done += 1;
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K[{}/{}] {what}", self.done, self.total);
            let _ = err.flush();
        }
    }

    /// Clears the progress line so that a result line can be printed.
    pub fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    pub fn finish(&mut self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.enabled = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn human_times() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let ago = |s: i64| human_time(now - Duration::seconds(s), now);
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(1), "just now");
        assert_eq!(ago(5), "5 seconds ago");
        assert_eq!(ago(60), "1 minute ago");
        assert_eq!(ago(150), "2 minutes ago");
        assert_eq!(ago(3600), "1 hour ago");
        assert_eq!(ago(86_400 * 3), "3 days ago");
        assert_eq!(ago(86_400 * 65), "2 months ago");
        assert_eq!(ago(86_400 * 800), "2 years ago");
        assert_eq!(ago(-7200), "in 2 hours");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["ID", "NAME", "X"]);
        t.row(vec!["1".into(), "long-name".into(), String::new()]);
        t.row(vec!["22".into(), "n".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "ID  NAME       X\n1   long-name\n22  n          y\n"
        );
    }

    #[test]
    fn yaml_and_json() {
        let v = serde_json::json!({"b": 1, "a": ["x"]});
        assert_eq!(
            render(&v, OutputFormat::Json).unwrap(),
            "{\n  \"b\": 1,\n  \"a\": [\n    \"x\"\n  ]\n}\n"
        );
        let y = render(&v, OutputFormat::Yaml).unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, v);
        assert!(y.find("b:").unwrap() < y.find("a:").unwrap(), "{y}");
    }
}
