//! Go's `strconv.Quote` and `strconv.Atoi`, reproduced because cloudflared's
//! error messages (which the REST API echoes verbatim) embed their output.

use std::fmt::Write as _;

/// Go's `strconv.Quote` (what `%q` prints for a string).
///
/// Go decides printability with `unicode.IsPrint`; std has no Unicode category
/// tables, so non-ASCII printability is approximated by the explicit list in
/// [`is_go_print`]. ASCII, which is what service URLs contain in practice, is exact.
pub(crate) fn quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// [`quote`] for bytes that may not be UTF-8 (Go strings), escaping invalid
/// bytes as `\xNN` like Go does.
pub(crate) fn quote_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('"');
    for chunk in b.utf8_chunks() {
        push_quoted(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

fn push_quoted(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_go_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
}

/// Approximation of Go's `strconv.IsPrint`: ASCII graphic characters and space
/// are printable; for non-ASCII, C1 controls, non-ASCII spaces/separators,
/// the common format characters (Cf), private-use areas and noncharacters are
/// not. Unassigned code points are treated as printable (Go would escape them).
pub(crate) fn is_go_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    !matches!(u,
        0x80..=0xa0
        | 0xad
        | 0x600..=0x605
        | 0x61c
        | 0x6dd
        | 0x70f
        | 0x890..=0x891
        | 0x8e2
        | 0x1680
        | 0x180e
        | 0x2000..=0x200f
        | 0x2028..=0x202f
        | 0x205f..=0x2064
        | 0x2066..=0x206f
        | 0x3000
        | 0xd800..=0xf8ff
        | 0xfdd0..=0xfdef
        | 0xfeff
        | 0xfff9..=0xfffb
        | 0x110bd
        | 0x110cd
        | 0x13430..=0x1343f
        | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a
        | 0xe0001
        | 0xe0020..=0xe007f
        | 0xf0000..=0x10ffff
    ) && (u & 0xfffe) != 0xfffe
}

/// Go's `strconv.Atoi` for a 64-bit `int`, with its exact error texts
/// (`strconv.Atoi: parsing "x": invalid syntax` / `value out of range`).
pub(crate) fn atoi(s: &str) -> Result<i64, String> {
    let syntax = || format!("strconv.Atoi: parsing {}: invalid syntax", quote(s));
    let range = || format!("strconv.Atoi: parsing {}: value out of range", quote(s));
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return Err(syntax());
    }
    // Go scans left to right and reports whichever problem it meets first, so a
    // long number followed by garbage is a range error, not a syntax error.
    let mut n: u64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return Err(syntax());
        }
        n = match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
        {
            Some(n) => n,
            None => return Err(range()),
        };
    }
    const CUTOFF: u64 = 1 << 63;
    if neg {
        if n > CUTOFF {
            return Err(range());
        }
        Ok((n as i64).wrapping_neg())
    } else {
        if n >= CUTOFF {
            return Err(range());
        }
        Ok(n as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        let cases = [
            ("", r#""""#),
            ("http://127.0.0.1:2333 ", r#""http://127.0.0.1:2333 ""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("\n\t\r\u{7}\u{8}\u{c}\u{b}", r#""\n\t\r\a\b\f\v""#),
            ("\u{1}\u{7f}", r#""\x01\x7f""#),
            ("môô", "\"môô\""),
            ("\u{a0}", r#""\u00a0""#),
            ("\u{200b}", r#""\u200b""#),
            ("\u{feff}", r#""\ufeff""#),
            ("\u{e000}", r#""\ue000""#),
            ("\u{10fffd}", r#""\U0010fffd""#),
            ("😀", "\"😀\""),
        ];
        assert_eq!(quote_bytes(b"%\xe6\x97"), r#""%\xe6\x97""#);
        assert_eq!(quote_bytes("%日".as_bytes()), "\"%日\"");
        for (input, want) in cases {
            assert_eq!(quote(input), want, "quote({input:?})");
        }
    }

    #[test]
    fn atoi_matches_go() {
        assert_eq!(atoi("404"), Ok(404));
        assert_eq!(atoi("+404"), Ok(404));
        assert_eq!(atoi("0404"), Ok(404));
        assert_eq!(atoi("-5"), Ok(-5));
        assert_eq!(atoi("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(atoi("9223372036854775807"), Ok(i64::MAX));
        let syntax = |s: &str| {
            Err(format!(
                "strconv.Atoi: parsing {}: invalid syntax",
                quote(s)
            ))
        };
        let range = |s: &str| {
            Err(format!(
                "strconv.Atoi: parsing {}: value out of range",
                quote(s)
            ))
        };
        assert_eq!(atoi(""), syntax(""));
        assert_eq!(atoi("+"), syntax("+"));
        assert_eq!(atoi("asdf"), syntax("asdf"));
        assert_eq!(atoi("40 4"), syntax("40 4"));
        assert_eq!(atoi(" 404"), syntax(" 404"));
        assert_eq!(atoi("1_000"), syntax("1_000"));
        assert_eq!(atoi("9223372036854775808"), range("9223372036854775808"));
        assert_eq!(atoi("-9223372036854775809"), range("-9223372036854775809"));
        assert_eq!(
            atoi("99999999999999999999x"),
            range("99999999999999999999x")
        );
    }
}
