//! RFC 3339 timestamps as Cloudflare emits and clients send them.

use culvert_store::Micros;
use serde::Serializer;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// `2024-12-04T22:03:26.291225Z`: UTC, microseconds, `Z`.
pub fn format_micros(micros: Micros) -> String {
    let nanos = i128::from(micros) * 1_000;
    let dt = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    dt.format(fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_string())
}

/// Parses what clients send in filters: RFC 3339 with `Z` or an offset
/// (the Python SDK sends `+00:00`), or a naive `YYYY-MM-DDTHH:MM:SS[.frac]`
/// taken as UTC (naive `datetime`s), or a plain date.
pub fn parse_timestamp(s: &str) -> Option<Micros> {
    let s = s.trim();
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .or_else(|| {
            let naive = format_description!(
                version = 2,
                "[year]-[month]-[day][first [T] [ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            PrimitiveDateTime::parse(s, naive)
                .ok()
                .map(|p| p.assume_offset(UtcOffset::UTC))
        })
        .or_else(|| {
            let date = format_description!("[year]-[month]-[day]");
            time::Date::parse(s, date)
                .ok()
                .map(|d| d.midnight().assume_offset(UtcOffset::UTC))
        })?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000).ok()
}

pub fn ser_micros<S: Serializer>(m: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micros(*m))
}

pub fn ser_opt_micros<S: Serializer>(m: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(&format_micros(*m)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_z() {
        assert_eq!(
            format_micros(1_733_349_806_291_225),
            "2024-12-04T22:03:26.291225Z"
        );
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn parses_client_forms() {
        let z = parse_timestamp("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_timestamp("2024-01-02T03:04:05+00:00"), Some(z));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05"), Some(z));
        assert_eq!(parse_timestamp("2024-01-02T05:04:05+02:00"), Some(z));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05.5Z"), Some(z + 500_000));
        assert!(parse_timestamp("2024-01-02").is_some());
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}
