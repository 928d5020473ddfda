//! Go's `time.Duration` as cloudflared's `CustomDuration` uses it: signed
//! nanoseconds, integer seconds on the JSON wire, Go duration strings in YAML.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A Go `time.Duration`: signed nanoseconds.
///
/// Signed because cloudflared accepts negative values (Go durations are signed);
/// [`GoDuration::to_std`] clamps those to zero for use with std/tokio timers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration {
    nanos: i64,
}

impl GoDuration {
    /// From signed nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        Self { nanos }
    }

    /// From whole seconds; `None` if it does not fit Go's `int64` nanoseconds.
    pub const fn from_secs(secs: i64) -> Option<Self> {
        match secs.checked_mul(NANOS_PER_SEC) {
            Some(nanos) => Some(Self { nanos }),
            None => None,
        }
    }

    /// From fractional seconds (rounded to the nanosecond); `None` if not finite
    /// or out of range.
    pub fn from_secs_f64(secs: f64) -> Option<Self> {
        let nanos = (secs * 1e9).round();
        // i64::MAX as f64 rounds up to 2^63, hence the strict comparison.
        if nanos.is_finite() && nanos >= -(2f64.powi(63)) && nanos < 2f64.powi(63) {
            Some(Self {
                nanos: nanos as i64,
            })
        } else {
            None
        }
    }

    /// Signed nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// As a std duration; negative values become zero.
    pub fn to_std(self) -> Duration {
        u64::try_from(self.nanos)
            .map(Duration::from_nanos)
            .unwrap_or(Duration::ZERO)
    }

    /// Go's `time.ParseDuration` (e.g. `30s`, `1m30s`, `1.5h`, `-2ms`), with Go's
    /// error messages (`time: invalid duration "abc"`).
    pub fn parse_go(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self::from_nanos)
    }
}

impl From<Duration> for GoDuration {
    /// Saturates at Go's maximum duration (about 292 years).
    fn from(d: Duration) -> Self {
        Self {
            nanos: i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        }
    }
}

/// Go's `Duration.String()` (`1m30s`, `1.5s`, `500ms`, `0s`).
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.nanos < 0;
        let u = self.nanos.unsigned_abs();
        let sign = if neg { "-" } else { "" };
        if u == 0 {
            return f.write_str("0s");
        }
        if u < 1_000_000_000 {
            let (unit, prec) = match u {
                0..1_000 => ("ns", 0),
                1_000..1_000_000 => ("µs", 3),
                _ => ("ms", 6),
            };
            let (int, frac) = split_frac(u, prec);
            return write!(f, "{sign}{int}{frac}{unit}");
        }
        let (secs, frac) = split_frac(u, 9);
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{sign}{h}h{m}m{s}{frac}s")
        } else if m > 0 {
            write!(f, "{sign}{m}m{s}{frac}s")
        } else {
            write!(f, "{sign}{s}{frac}s")
        }
    }
}

/// Splits `v` into `v / 10^prec` and a ".ddd" fraction without trailing zeros.
fn split_frac(v: u64, prec: u32) -> (u64, String) {
    let scale = 10u64.pow(prec);
    let frac = v % scale;
    if frac == 0 {
        return (v / scale, String::new());
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    (v / scale, format!(".{}", digits.trim_end_matches('0')))
}

/// Serializes like cloudflared's `CustomDuration.MarshalJSON`: seconds, as an
/// integer when whole.
impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.nanos % NANOS_PER_SEC == 0 {
            s.serialize_i64(self.nanos / NANOS_PER_SEC)
        } else {
            s.serialize_f64(self.nanos as f64 / 1e9)
        }
    }
}

/// Deserializes leniently (local-config rules): a number is seconds, a string
/// is a Go duration.
impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        crate::decode::duration_value(&v, crate::Dialect::Local).map_err(serde::de::Error::custom)
    }
}

fn quote_time(s: &str) -> String {
    // Go's time package has its own quoting: non-ASCII and control bytes as \x.
    let mut out = String::from("\"");
    for c in s.chars() {
        if (c as u32) >= 0x80 || c < ' ' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", quote_time(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.bytes().next()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u64 = 1 << 63;
    let mut d: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for b in s[..int_len].bytes() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(b - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        s = &s[int_len..];
        let pre = int_len > 0;
        // Fraction part; digits past int64 precision are ignored like Go does.
        let mut f: u64 = 0;
        let mut scale = 1f64;
        let mut post = false;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            post = frac_len > 0;
            let mut overflow = false;
            for b in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(b - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        // Unit: everything up to the next digit or '.'.
        let unit_len = s
            .bytes()
            .take_while(|b| *b != b'.' && !b.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err(format!(
                "time: missing unit in duration {}",
                quote_time(orig)
            ));
        }
        let unit_str = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u64 = match unit_str {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote_time(unit_str),
                    quote_time(orig)
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        d += v;
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((d as i64).wrapping_neg());
    }
    if d > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(d as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = NANOS_PER_SEC;

    #[test]
    fn parse_go_durations() {
        let ok = [
            ("0", 0),
            ("-0", 0),
            ("30s", 30 * S),
            ("1m30s", 90 * S),
            ("1.5h", 5400 * S),
            ("-2ms", -2_000_000),
            ("+5s", 5 * S),
            ("1µs", 1_000),
            ("1μs", 1_000),
            ("1us", 1_000),
            ("3ns", 3),
            (".5s", S / 2),
            ("1.s", S),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ];
        for (s, want) in ok {
            assert_eq!(
                GoDuration::parse_go(s).map(GoDuration::as_nanos),
                Ok(want),
                "{s}"
            );
        }
        let err = [
            ("", "time: invalid duration \"\""),
            ("abc", "time: invalid duration \"abc\""),
            ("1", "time: missing unit in duration \"1\""),
            ("1x", "time: unknown unit \"x\" in duration \"1x\""),
            ("1 s", "time: unknown unit \" s\" in duration \"1 s\""),
            (".s", "time: invalid duration \".s\""),
            ("-", "time: invalid duration \"-\""),
            (
                "1é",
                "time: unknown unit \"\\xc3\\xa9\" in duration \"1\\xc3\\xa9\"",
            ),
            (
                "2562047h47m16.854775808s",
                "time: invalid duration \"2562047h47m16.854775808s\"",
            ),
            (
                "9999999999999999999h",
                "time: invalid duration \"9999999999999999999h\"",
            ),
        ];
        for (s, want) in err {
            assert_eq!(GoDuration::parse_go(s), Err(want.to_owned()), "{s}");
        }
    }

    #[test]
    fn display_matches_go() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (2_000_000, "2ms"),
            (S / 2, "500ms"),
            (S, "1s"),
            (S + S / 2, "1.5s"),
            (90 * S, "1m30s"),
            (3600 * S, "1h0m0s"),
            (-30 * S, "-30s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(GoDuration::from_nanos(nanos).to_string(), want);
        }
    }

    #[test]
    fn conversions() {
        assert_eq!(
            GoDuration::from_secs(30).unwrap().to_std(),
            Duration::from_secs(30)
        );
        assert_eq!(GoDuration::from_secs(-1).unwrap().to_std(), Duration::ZERO);
        assert_eq!(GoDuration::from_secs(9_223_372_037), None);
        assert_eq!(GoDuration::from_secs_f64(0.5).unwrap().as_nanos(), S / 2);
        assert_eq!(GoDuration::from_secs_f64(1e100), None);
        assert_eq!(GoDuration::from_secs_f64(f64::NAN), None);
        assert_eq!(
            GoDuration::from(Duration::from_secs(u64::MAX)).as_nanos(),
            i64::MAX
        );
        assert_eq!(
            serde_json::to_string(&GoDuration::from_nanos(30 * S)).unwrap(),
            "30"
        );
        assert_eq!(
            serde_json::to_string(&GoDuration::from_nanos(S / 2)).unwrap(),
            "0.5"
        );
        let d: GoDuration = serde_json::from_str("\"1m\"").unwrap();
        assert_eq!(d.as_nanos(), 60 * S);
        let d: GoDuration = serde_json::from_str("5").unwrap();
        assert_eq!(d.as_nanos(), 5 * S);
        assert!(serde_json::from_str::<GoDuration>("true").is_err());
    }
}
