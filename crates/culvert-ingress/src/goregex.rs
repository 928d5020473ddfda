//! Go RE2 (`regexp.Compile`) front end for the `regex` crate.
//!
//! cloudflared compiles `path` with Go's `regexp`, and the REST API echoes
//! Go's message on failure (`Rule #1 has an invalid regex: error parsing
//! regexp: missing argument to repetition operator: `*``). The two syntaxes are
//! close but not equal, so instead of handing the pattern to `regex` directly we
//! parse it with Go's rules (`regexp/syntax`, Perl flags), report Go's errors,
//! and emit an equivalent pattern in `regex` syntax. Differences handled:
//!
//! * `{` that is not a valid repeat (`/api/{id}`) is a literal in Go, an error in Rust.
//! * `\<`, `\>` and other escaped punctuation are literals in Go, word boundaries
//!   or errors in Rust; `\Q…\E` exists only in Go; `\C`, `\1`, `(?x)`, `(?u)` are
//!   errors only in Go.
//! * `[`, `&&`, `--`, `~~` inside a class are plain characters in Go but nested
//!   classes / set operations in Rust.
//! * `\d`, `\s`, `\w`, `\b` are ASCII-only in Go, Unicode in Rust (emitted as
//!   explicit ASCII classes; `\B` stays Unicode because `regex` forbids an ASCII
//!   `\B` on `&str`).
//! * Go's limits: repeat counts ≤ 1000 (also nested products), nesting depth.
//! * Duplicate or unusual group names (names are dropped; matching never uses them).
//!
//! Not reproduced exactly: Go's nesting-height accounting (approximated) and its
//! program-size limit (Rust's compile-size limit is mapped to "expression too large").

use std::fmt;

use regex::{Regex, RegexBuilder};

/// Go's `regexp/syntax.ErrorCode` texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Internal,
    InvalidCharRange,
    InvalidEscape,
    InvalidNamedCapture,
    InvalidPerlOp,
    InvalidRepeatOp,
    InvalidRepeatSize,
    MissingBracket,
    MissingParen,
    MissingRepeatArgument,
    TrailingBackslash,
    UnexpectedParen,
    NestingDepth,
    Large,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Internal => "regexp/syntax: internal error",
            Code::InvalidCharRange => "invalid character class range",
            Code::InvalidEscape => "invalid escape sequence",
            Code::InvalidNamedCapture => "invalid named capture",
            Code::InvalidPerlOp => "invalid or unsupported Perl syntax",
            Code::InvalidRepeatOp => "invalid nested repetition operator",
            Code::InvalidRepeatSize => "invalid repeat count",
            Code::MissingBracket => "missing closing ]",
            Code::MissingParen => "missing closing )",
            Code::MissingRepeatArgument => "missing argument to repetition operator",
            Code::TrailingBackslash => "trailing backslash at end of expression",
            Code::UnexpectedParen => "unexpected )",
            Code::NestingDepth => "expression nests too deeply",
            Code::Large => "expression too large",
        }
    }
}

/// Go's `*syntax.Error`: `error parsing regexp: <code>: `<expr>``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoRegexError {
    pub code: Code,
    pub expr: String,
}

impl fmt::Display for GoRegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error parsing regexp: {}: `{}`",
            self.code.as_str(),
            self.expr
        )
    }
}

fn err<T>(code: Code, expr: &str) -> Result<T, GoRegexError> {
    Err(GoRegexError {
        code,
        expr: expr.to_owned(),
    })
}

/// Go's maximum repeat count and nesting height.
const MAX_REPEAT: u64 = 1000;
const MAX_HEIGHT: u32 = 1000;
/// Deepest nesting handed to `regex` (its default); deeper patterns get Go's
/// "expression nests too deeply" even though Go itself allows up to 1000.
const RUST_NEST_LIMIT: u32 = 250;

/// Compiles a Go regexp into an equivalent `regex::Regex`.
pub(crate) fn compile(expr: &str) -> Result<Regex, GoRegexError> {
    let translated = translate(expr)?;
    RegexBuilder::new(&translated)
        // Go allows ~1000 levels, but regex's compiler recurses and overflows a
        // 2 MiB thread stack long before that; its default limit is safe.
        .nest_limit(RUST_NEST_LIMIT)
        .size_limit(32 << 20)
        .build()
        .or_else(|e| match e {
            regex::Error::CompiledTooBig(_) => err(Code::Large, expr),
            _ if e.to_string().contains("nest") => err(Code::NestingDepth, expr),
            _ => err(Code::Internal, expr),
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Literal, class, group: can take a repetition as is.
    Plain,
    /// Empty-width assertion: wrapped before repetition (`(?:^)*`).
    Assertion,
    /// Already repeated: Go allows `a*(?i)*`, Rust needs `(?:a*)*`.
    Repeated,
}

#[derive(Clone, Copy)]
struct Atom {
    start: usize,
    end: usize,
    kind: Kind,
    /// Approximate Go tree height of this node.
    height: u32,
    /// Smallest budget Go's `repeatIsValid` needs for this node.
    need: u64,
}

struct Frame {
    /// Offset in the output of this group's opening text.
    open: usize,
    capturing: bool,
    last: Option<Atom>,
    branch_items: u32,
    branch_height: u32,
    branches: u32,
    alt_height: u32,
    need: u64,
}

impl Frame {
    fn new(open: usize, capturing: bool) -> Self {
        Self {
            open,
            capturing,
            last: None,
            branch_items: 0,
            branch_height: 0,
            branches: 0,
            alt_height: 0,
            need: 0,
        }
    }

    fn commit(&mut self) {
        if let Some(a) = self.last.take() {
            self.branch_items += 1;
            self.branch_height = self.branch_height.max(a.height);
            self.need = self.need.max(a.need);
        }
    }

    fn end_branch(&mut self) {
        self.commit();
        let h = match self.branch_items {
            0 => 1,
            1 => self.branch_height,
            _ => self.branch_height.saturating_add(1),
        };
        self.alt_height = self.alt_height.max(h);
        self.branches += 1;
        self.branch_items = 0;
        self.branch_height = 0;
    }

    fn content_height(&self) -> u32 {
        if self.branches > 1 {
            self.alt_height.saturating_add(1)
        } else {
            self.alt_height
        }
    }
}

struct Parser<'a> {
    whole: &'a str,
    out: String,
    frames: Vec<Frame>,
}

/// Translates Go syntax to `regex` syntax, failing with Go's error.
pub(crate) fn translate(whole: &str) -> Result<String, GoRegexError> {
    let mut p = Parser {
        whole,
        out: String::with_capacity(whole.len() + 16),
        frames: vec![Frame::new(0, false)],
    };
    p.run()?;
    Ok(p.out)
}

impl<'a> Parser<'a> {
    fn frame(&mut self) -> &mut Frame {
        // The root frame is never popped (`)` without an open group errors).
        let n = self.frames.len();
        &mut self.frames[n - 1]
    }

    fn push_atom(&mut self, text: &str, kind: Kind) {
        self.frame().commit();
        let start = self.out.len();
        self.out.push_str(text);
        let end = self.out.len();
        self.frame().last = Some(Atom {
            start,
            end,
            kind,
            height: 1,
            need: 0,
        });
    }

    fn push_literal(&mut self, c: char) {
        self.push_atom(&literal(c), Kind::Plain);
    }

    fn run(&mut self) -> Result<(), GoRegexError> {
        let whole = self.whole;
        let mut pos = 0;
        // Text of the previous token if it was a repetition (Go's `lastRepeat`).
        let mut last_repeat: Option<usize> = None;
        while pos < whole.len() {
            let t = &whole[pos..];
            let mut repeat = None;
            let c = t.as_bytes()[0];
            match c {
                b'(' => {
                    if t.as_bytes().get(1) == Some(&b'?') {
                        pos += self.perl_flags(t)?;
                    } else {
                        self.open_group(true, "(");
                        pos += 1;
                    }
                }
                b'|' => {
                    self.frame().end_branch();
                    self.out.push('|');
                    pos += 1;
                }
                b')' => {
                    self.close_group()?;
                    pos += 1;
                }
                b'^' => {
                    self.push_atom("^", Kind::Assertion);
                    pos += 1;
                }
                b'$' => {
                    self.push_atom("$", Kind::Assertion);
                    pos += 1;
                }
                b'.' => {
                    self.push_atom(".", Kind::Plain);
                    pos += 1;
                }
                b'[' => {
                    pos += self.class(t)?;
                }
                b'*' | b'+' | b'?' => {
                    let mut len = 1;
                    if t.as_bytes().get(1) == Some(&b'?') {
                        len = 2;
                    }
                    self.repeat(&t[..len], None, last_repeat.map(|s| &whole[s..pos + len]))?;
                    repeat = Some(pos);
                    pos += len;
                }
                b'{' => match parse_repeat(t) {
                    None => {
                        // Not a valid repeat: Go treats `{` as a literal.
                        self.push_literal('{');
                        pos += 1;
                    }
                    Some((min, max, len)) => {
                        let op = &t[..len];
                        if !(0..=1000).contains(&min) || max > 1000 || (max >= 0 && min > max) {
                            return err(Code::InvalidRepeatSize, op);
                        }
                        let mut full = len;
                        if t.as_bytes().get(len) == Some(&b'?') {
                            full += 1;
                        }
                        self.repeat(
                            &t[..full],
                            Some((min, max)),
                            last_repeat.map(|s| &whole[s..pos + full]),
                        )?;
                        repeat = Some(pos);
                        pos += full;
                    }
                },
                b'\\' => {
                    pos += self.top_escape(t)?;
                }
                _ => {
                    let ch = t.chars().next().unwrap_or('\u{fffd}');
                    self.push_literal(ch);
                    pos += ch.len_utf8();
                }
            }
            last_repeat = repeat;
        }
        if self.frames.len() > 1 {
            return err(Code::MissingParen, whole);
        }
        self.frame().end_branch();
        if self.frames[0].content_height() > MAX_HEIGHT {
            return err(Code::NestingDepth, whole);
        }
        Ok(())
    }

    fn open_group(&mut self, capturing: bool, text: &str) {
        self.frame().commit();
        let open = self.out.len();
        self.out.push_str(text);
        self.frames.push(Frame::new(open, capturing));
    }

    fn close_group(&mut self) -> Result<(), GoRegexError> {
        if self.frames.len() < 2 {
            return err(Code::UnexpectedParen, self.whole);
        }
        let mut f = self.frames.pop().unwrap_or_else(|| Frame::new(0, false));
        f.end_branch();
        self.out.push(')');
        let content = f.content_height();
        let height = if f.capturing {
            content.saturating_add(1)
        } else {
            content
        };
        if height > MAX_HEIGHT {
            return err(Code::NestingDepth, self.whole);
        }
        let end = self.out.len();
        self.frame().last = Some(Atom {
            start: f.open,
            end,
            kind: Kind::Plain,
            height,
            need: f.need,
        });
        Ok(())
    }

    /// Applies a repetition operator to the last atom (Go's `parser.repeat`).
    /// `op` includes a trailing lazy `?`; `nested` is the text from the previous
    /// repetition to the end of this one, if the previous token was one.
    fn repeat(
        &mut self,
        op: &str,
        counts: Option<(i64, i64)>,
        nested: Option<&str>,
    ) -> Result<(), GoRegexError> {
        if let Some(n) = nested {
            // Perl forbids stacking: `a**` is an error, not a double star.
            return err(Code::InvalidRepeatOp, n);
        }
        let Some(mut atom) = self.frame().last else {
            return err(Code::MissingRepeatArgument, op);
        };
        if atom.kind != Kind::Plain {
            self.out.insert(atom.end, ')');
            self.out.insert_str(atom.start, "(?:");
            atom.end += 4;
        }
        self.out.insert_str(atom.end, op);
        atom.end += op.len();
        atom.kind = Kind::Repeated;
        atom.height = atom.height.saturating_add(1);
        if atom.height > MAX_HEIGHT {
            return err(Code::NestingDepth, self.whole);
        }
        if let Some((min, max)) = counts {
            // Go's repeatIsValid: nested {n} counts multiply within a budget of 1000.
            atom.need = if max == 0 {
                0
            } else {
                let m = if max < 0 { min } else { max } as u64;
                if m == 0 {
                    atom.need
                } else {
                    m.max(m.saturating_mul(atom.need))
                }
            };
            if (min >= 2 || max >= 2) && atom.need > MAX_REPEAT {
                return err(Code::InvalidRepeatSize, op);
            }
        }
        self.frame().last = Some(atom);
        Ok(())
    }

    /// `(?…`: named groups, non-capturing groups and flag changes.
    fn perl_flags(&mut self, t: &str) -> Result<usize, GoRegexError> {
        let b = t.as_bytes();
        let starts_with_p = b.len() > 4 && b[2] == b'P' && b[3] == b'<';
        let starts_with_name = b.len() > 3 && b[2] == b'<';
        if starts_with_p || starts_with_name {
            let name_start = if starts_with_p { 4 } else { 3 };
            let Some(end) = t.find('>') else {
                return err(Code::InvalidNamedCapture, t);
            };
            let name = &t[name_start..end];
            if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
                return err(Code::InvalidNamedCapture, &t[..=end]);
            }
            // Names only matter for extraction; dropping them avoids Rust's
            // duplicate-name error, which Go does not have.
            self.open_group(true, "(");
            return Ok(end + 1);
        }
        let mut on = String::new();
        let mut off = String::new();
        let mut negated = false;
        let mut saw_flag = false;
        let mut i = 2;
        while i < t.len() {
            let c = t[i..].chars().next().unwrap_or('\u{fffd}');
            i += c.len_utf8();
            match c {
                'i' | 'm' | 's' | 'U' => {
                    let (set, clear) = if negated {
                        (&mut off, &mut on)
                    } else {
                        (&mut on, &mut off)
                    };
                    // Rust rejects repeated flags; Go lets the last mention win.
                    if !set.contains(c) {
                        set.push(c);
                    }
                    clear.retain(|x| x != c);
                    saw_flag = true;
                }
                '-' => {
                    if negated {
                        break;
                    }
                    negated = true;
                    saw_flag = false;
                }
                ':' | ')' => {
                    if negated && !saw_flag {
                        break;
                    }
                    let flags = if off.is_empty() {
                        on.clone()
                    } else {
                        format!("{on}-{off}")
                    };
                    if c == ':' {
                        self.open_group(false, &format!("(?{flags}:"));
                    } else if !flags.is_empty() {
                        // Flags-only groups push nothing in Go, so the last atom
                        // stays repeatable: `a(?i)*` repeats `a`.
                        self.out.push_str(&format!("(?{flags})"));
                    }
                    return Ok(i);
                }
                _ => break,
            }
        }
        err(Code::InvalidPerlOp, &t[..i.min(t.len())])
    }

    /// A backslash outside a class.
    fn top_escape(&mut self, t: &str) -> Result<usize, GoRegexError> {
        if let Some(&c) = t.as_bytes().get(1) {
            match c {
                b'A' => {
                    self.push_atom(r"\A", Kind::Assertion);
                    return Ok(2);
                }
                b'z' => {
                    self.push_atom(r"\z", Kind::Assertion);
                    return Ok(2);
                }
                b'b' => {
                    self.push_atom(r"(?-u:\b)", Kind::Assertion);
                    return Ok(2);
                }
                b'B' => {
                    self.push_atom(r"\B", Kind::Assertion);
                    return Ok(2);
                }
                b'C' => return err(Code::InvalidEscape, &t[..2]),
                b'Q' => {
                    let body = &t[2..];
                    let (lit, consumed) = match body.find(r"\E") {
                        Some(i) => (&body[..i], 2 + i + 2),
                        None => (body, t.len()),
                    };
                    for ch in lit.chars() {
                        self.push_literal(ch);
                    }
                    return Ok(consumed);
                }
                _ => {}
            }
        }
        if let Some((class, len)) = unicode_class(t)? {
            self.push_atom(&class, Kind::Plain);
            return Ok(len);
        }
        if let Some((class, _)) = perl_class(t) {
            self.push_atom(&format!("[{class}]"), Kind::Plain);
            return Ok(2);
        }
        let (r, len) = parse_escape(t)?;
        match char::from_u32(r) {
            Some(ch) => self.push_literal(ch),
            // A surrogate can never match valid UTF-8 (Go compares decoded runes).
            None => self.push_atom(NEVER, Kind::Plain),
        }
        Ok(len)
    }

    /// `[...]`, returning the bytes consumed (Go's `parseClass`).
    fn class(&mut self, s: &str) -> Result<usize, GoRegexError> {
        let mut t = 1;
        let mut items = String::new();
        let mut negated = false;
        if s[t..].starts_with('^') {
            negated = true;
            t += 1;
        }
        let mut first = true;
        loop {
            let r = &s[t..];
            if r.starts_with(']') && !first {
                break;
            }
            first = false;
            if r.len() > 2
                && r.starts_with("[:")
                && let Some(i) = r[2..].find(":]")
            {
                let name = &r[..i + 4];
                if !is_posix_class(name) {
                    return err(Code::InvalidCharRange, name);
                }
                items.push_str(name);
                t += name.len();
                continue;
            }
            if let Some((class, len)) = unicode_class(r)? {
                items.push_str(&class);
                t += len;
                continue;
            }
            if let Some((class, len)) = perl_class(r) {
                if class.starts_with('^') {
                    items.push_str(&format!("[{class}]"));
                } else {
                    items.push_str(class);
                }
                t += len;
                continue;
            }
            let range_start = t;
            let (lo, n) = class_char(r, s)?;
            t += n;
            let mut hi = lo;
            let r2 = &s.as_bytes()[t..];
            if r2.len() >= 2 && r2[0] == b'-' && r2[1] != b']' {
                t += 1;
                let (h, n2) = class_char(&s[t..], s)?;
                t += n2;
                if h < lo {
                    return err(Code::InvalidCharRange, &s[range_start..t]);
                }
                hi = h;
            }
            push_range(&mut items, lo, hi);
        }
        t += 1;
        let mut text = String::with_capacity(items.len() + 3);
        text.push('[');
        if negated {
            text.push('^');
        }
        if items.is_empty() {
            // Only surrogates were listed: Rust has no `[]`, so spell the set out.
            let any_or_none = if negated {
                r"[\x{0}-\x{10FFFF}]"
            } else {
                NEVER
            };
            self.push_atom(any_or_none, Kind::Plain);
            return Ok(t);
        }
        text.push_str(&items);
        text.push(']');
        self.push_atom(&text, Kind::Plain);
        Ok(t)
    }
}

/// A class that matches nothing.
const NEVER: &str = r"[^\x{0}-\x{10FFFF}]";

fn literal(c: char) -> String {
    regex::escape(c.encode_utf8(&mut [0u8; 4]))
}

fn class_literal(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if ch.is_ascii_alphanumeric() => ch.to_string(),
        _ => format!("\\x{{{c:X}}}"),
    }
}

/// Adds `lo-hi` to a Rust class body, skipping the surrogate gap Rust rejects.
fn push_range(items: &mut String, lo: u32, hi: u32) {
    let mut add = |lo: u32, hi: u32| {
        if lo > hi {
            return;
        }
        items.push_str(&class_literal(lo));
        if hi > lo {
            items.push('-');
            items.push_str(&class_literal(hi));
        }
    };
    add(lo, hi.min(0xD7FF));
    add(lo.max(0xE000), hi);
}

/// A character inside a class: an escape or a single rune.
fn class_char(s: &str, whole_class: &str) -> Result<(u32, usize), GoRegexError> {
    match s.chars().next() {
        None => err(Code::MissingBracket, whole_class),
        Some('\\') => parse_escape(s),
        Some(c) => Ok((c as u32, c.len_utf8())),
    }
}

fn is_posix_class(name: &str) -> bool {
    let inner = name
        .strip_prefix("[:")
        .and_then(|n| n.strip_suffix(":]"))
        .unwrap_or("");
    let inner = inner.strip_prefix('^').unwrap_or(inner);
    matches!(
        inner,
        "alnum"
            | "alpha"
            | "ascii"
            | "blank"
            | "cntrl"
            | "digit"
            | "graph"
            | "lower"
            | "print"
            | "punct"
            | "space"
            | "upper"
            | "word"
            | "xdigit"
    )
}

/// `\d \D \s \S \w \W` as ASCII class bodies (Go's Perl classes are ASCII).
/// Negated ones start with `^` and must be wrapped in brackets.
fn perl_class(t: &str) -> Option<(&'static str, usize)> {
    let b = t.as_bytes();
    if b.len() < 2 || b[0] != b'\\' {
        return None;
    }
    let class = match b[1] {
        b'd' => "0-9",
        b'D' => "^0-9",
        b's' => r"\t\n\x0C\r ",
        b'S' => r"^\t\n\x0C\r ",
        b'w' => "0-9A-Za-z_",
        b'W' => "^0-9A-Za-z_",
        _ => return None,
    };
    Some((class, 2))
}

/// `\pX`, `\p{Name}`, `\p{^Name}`, `\P…` (Go's `parseUnicodeClass`).
fn unicode_class(s: &str) -> Result<Option<(String, usize)>, GoRegexError> {
    let b = s.as_bytes();
    if b.len() < 2 || b[0] != b'\\' || (b[1] != b'p' && b[1] != b'P') {
        return Ok(None);
    }
    let mut negated = b[1] == b'P';
    let (seq, name) = match s[2..].chars().next() {
        Some('{') => {
            let Some(end) = s.find('}') else {
                return err(Code::InvalidCharRange, s);
            };
            (&s[..=end], &s[3..end])
        }
        Some(c) => {
            let seq = &s[..2 + c.len_utf8()];
            (seq, &seq[2..])
        }
        None => (&s[..2], ""),
    };
    let name = match name.strip_prefix('^') {
        Some(n) => {
            negated = !negated;
            n
        }
        None => name,
    };
    if !is_go_unicode_table(name) {
        return err(Code::InvalidCharRange, seq);
    }
    let p = if negated { 'P' } else { 'p' };
    Ok(Some((format!("\\{p}{{{name}}}"), seq.len())))
}

/// Go's `parseEscape`: returns the rune and the bytes consumed.
fn parse_escape(s: &str) -> Result<(u32, usize), GoRegexError> {
    let t = &s[1..];
    let Some(c) = t.chars().next() else {
        return err(Code::TrailingBackslash, "");
    };
    let mut pos = 1 + c.len_utf8();
    let invalid = |pos: usize| err(Code::InvalidEscape, &s[..pos]);
    match c {
        '1'..='7' => {
            // A single non-zero digit would be a backreference: unsupported.
            if !s[pos..].starts_with(|d: char| ('0'..='7').contains(&d)) {
                return invalid(pos);
            }
            Ok(octal(s, c, pos))
        }
        '0' => Ok(octal(s, c, pos)),
        'x' => {
            let Some(c2) = s[pos..].chars().next() else {
                return invalid(pos);
            };
            pos += c2.len_utf8();
            if c2 == '{' {
                let mut nhex = 0;
                let mut r: u32 = 0;
                loop {
                    let Some(d) = s[pos..].chars().next() else {
                        return invalid(pos);
                    };
                    pos += d.len_utf8();
                    if d == '}' {
                        break;
                    }
                    let Some(v) = d.to_digit(16) else {
                        return invalid(pos);
                    };
                    r = r * 16 + v;
                    if r > 0x10FFFF {
                        return invalid(pos);
                    }
                    nhex += 1;
                }
                if nhex == 0 {
                    return invalid(pos);
                }
                return Ok((r, pos));
            }
            let x = c2.to_digit(16);
            let c3 = s[pos..].chars().next();
            if let Some(c3) = c3 {
                pos += c3.len_utf8();
            }
            match (x, c3.and_then(|c| c.to_digit(16))) {
                (Some(x), Some(y)) => Ok((x * 16 + y, pos)),
                _ => invalid(pos),
            }
        }
        'a' => Ok((0x07, pos)),
        'f' => Ok((0x0C, pos)),
        'n' => Ok((0x0A, pos)),
        'r' => Ok((0x0D, pos)),
        't' => Ok((0x09, pos)),
        'v' => Ok((0x0B, pos)),
        // Escaped ASCII punctuation is always itself (Go also allows `\_`).
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok((c as u32, pos)),
        _ => invalid(pos),
    }
}

/// Up to two more octal digits after the first.
fn octal(s: &str, first: char, mut pos: usize) -> (u32, usize) {
    let mut r = first as u32 - '0' as u32;
    for _ in 0..2 {
        match s.as_bytes().get(pos) {
            Some(d @ b'0'..=b'7') => {
                r = r * 8 + u32::from(d - b'0');
                pos += 1;
            }
            _ => break,
        }
    }
    (r, pos)
}

/// Go's `{n}`, `{n,}`, `{n,m}` parser. Returns (min, max, bytes) with
/// max = -1 for "no maximum" and -1 for numbers ≥ 1e8; `None` means `{` is a literal.
fn parse_repeat(s: &str) -> Option<(i64, i64, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    let (mut min, n) = parse_int(&b[i..])?;
    i += n;
    let max;
    if *b.get(i)? != b',' {
        max = min;
    } else {
        i += 1;
        if *b.get(i)? == b'}' {
            max = -1;
        } else {
            let (m, n) = parse_int(&b[i..])?;
            i += n;
            if m < 0 {
                // Too big a maximum makes Go flag the whole repeat as invalid.
                min = -1;
            }
            max = m;
        }
    }
    if *b.get(i)? != b'}' {
        return None;
    }
    Some((min, max, i + 1))
}

/// Decimal without leading zeros; values ≥ 1e8 become -1 (too big).
fn parse_int(b: &[u8]) -> Option<(i64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || (n >= 2 && b[0] == b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in &b[..n] {
        if v >= 100_000_000 {
            return Some((-1, n));
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some((v, n))
}

/// Go's `unicode.Categories`, `unicode.Scripts` and "Any" (names are case-sensitive in Go).
fn is_go_unicode_table(name: &str) -> bool {
    const CATEGORIES: &[&str] = &[
        "Any", "C", "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me",
        "Mn", "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc",
        "Sk", "Sm", "So", "Z", "Zl", "Zp", "Zs",
    ];
    const SCRIPTS: &[&str] = &[
        "Adlam",
        "Ahom",
        "Anatolian_Hieroglyphs",
        "Arabic",
        "Armenian",
        "Avestan",
        "Balinese",
        "Bamum",
        "Bassa_Vah",
        "Batak",
        "Bengali",
        "Bhaiksuki",
        "Bopomofo",
        "Brahmi",
        "Braille",
        "Buginese",
        "Buhid",
        "Canadian_Aboriginal",
        "Carian",
        "Caucasian_Albanian",
        "Chakma",
        "Cham",
        "Cherokee",
        "Chorasmian",
        "Common",
        "Coptic",
        "Cuneiform",
        "Cypriot",
        "Cypro_Minoan",
        "Cyrillic",
        "Deseret",
        "Devanagari",
        "Dives_Akuru",
        "Dogra",
        "Duployan",
        "Egyptian_Hieroglyphs",
        "Elbasan",
        "Elymaic",
        "Ethiopic",
        "Georgian",
        "Glagolitic",
        "Gothic",
        "Grantha",
        "Greek",
        "Gujarati",
        "Gunjala_Gondi",
        "Gurmukhi",
        "Han",
        "Hangul",
        "Hanifi_Rohingya",
        "Hanunoo",
        "Hatran",
        "Hebrew",
        "Hiragana",
        "Imperial_Aramaic",
        "Inherited",
        "Inscriptional_Pahlavi",
        "Inscriptional_Parthian",
        "Javanese",
        "Kaithi",
        "Kannada",
        "Katakana",
        "Kawi",
        "Kayah_Li",
        "Kharoshthi",
        "Khitan_Small_Script",
        "Khmer",
        "Khojki",
        "Khudawadi",
        "Lao",
        "Latin",
        "Lepcha",
        "Limbu",
        "Linear_A",
        "Linear_B",
        "Lisu",
        "Lycian",
        "Lydian",
        "Mahajani",
        "Makasar",
        "Malayalam",
        "Mandaic",
        "Manichaean",
        "Marchen",
        "Masaram_Gondi",
        "Medefaidrin",
        "Meetei_Mayek",
        "Mende_Kikakui",
        "Meroitic_Cursive",
        "Meroitic_Hieroglyphs",
        "Miao",
        "Modi",
        "Mongolian",
        "Mro",
        "Multani",
        "Myanmar",
        "Nabataean",
        "Nag_Mundari",
        "Nandinagari",
        "New_Tai_Lue",
        "Newa",
        "Nko",
        "Nushu",
        "Nyiakeng_Puachue_Hmong",
        "Ogham",
        "Ol_Chiki",
        "Old_Hungarian",
        "Old_Italic",
        "Old_North_Arabian",
        "Old_Permic",
        "Old_Persian",
        "Old_Sogdian",
        "Old_South_Arabian",
        "Old_Turkic",
        "Old_Uyghur",
        "Oriya",
        "Osage",
        "Osmanya",
        "Pahawh_Hmong",
        "Palmyrene",
        "Pau_Cin_Hau",
        "Phags_Pa",
        "Phoenician",
        "Psalter_Pahlavi",
        "Rejang",
        "Runic",
        "Samaritan",
        "Saurashtra",
        "Sharada",
        "Shavian",
        "Siddham",
        "SignWriting",
        "Sinhala",
        "Sogdian",
        "Sora_Sompeng",
        "Soyombo",
        "Sundanese",
        "Syloti_Nagri",
        "Syriac",
        "Tagalog",
        "Tagbanwa",
        "Tai_Le",
        "Tai_Tham",
        "Tai_Viet",
        "Takri",
        "Tamil",
        "Tangsa",
        "Tangut",
        "Telugu",
        "Thaana",
        "Thai",
        "Tibetan",
        "Tifinagh",
        "Tirhuta",
        "Toto",
        "Ugaritic",
        "Vai",
        "Vithkuqi",
        "Wancho",
        "Warang_Citi",
        "Yezidi",
        "Yi",
        "Zanabazar_Square",
    ];
    CATEGORIES.contains(&name) || SCRIPTS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn go_err(expr: &str) -> String {
        compile(expr).expect_err(expr).to_string()
    }

    fn matches(expr: &str, s: &str) -> bool {
        compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .is_match(s)
    }

    #[test]
    fn go_error_messages() {
        let cases = [
            ("*/subpath2", "missing argument to repetition operator: `*`"),
            ("a|*", "missing argument to repetition operator: `*`"),
            ("(+)", "missing argument to repetition operator: `+`"),
            ("(?i)*", "missing argument to repetition operator: `*`"),
            ("??", "missing argument to repetition operator: `??`"),
            ("{2}", "missing argument to repetition operator: `{2}`"),
            ("a**", "invalid nested repetition operator: `**`"),
            ("a*?+", "invalid nested repetition operator: `*?+`"),
            ("a{2}{3}", "invalid nested repetition operator: `{2}{3}`"),
            ("a{1001}", "invalid repeat count: `{1001}`"),
            ("a{2,1}", "invalid repeat count: `{2,1}`"),
            ("a{100000000}", "invalid repeat count: `{100000000}`"),
            ("(a{10}){101}", "invalid repeat count: `{101}`"),
            ("(a{10}){101}?", "invalid repeat count: `{101}?`"),
            ("(", "missing closing ): `(`"),
            ("(a(b)", "missing closing ): `(a(b)`"),
            ("a)", "unexpected ): `a)`"),
            ("[a", "missing closing ]: `[a`"),
            ("x[^", "missing closing ]: `[^`"),
            ("[[:alpha:]", "missing closing ]: `[[:alpha:]`"),
            ("[z-a]", "invalid character class range: `z-a`"),
            ("[a--b]", "invalid character class range: `a--`"),
            ("[[:foo:]]", "invalid character class range: `[:foo:]`"),
            (r"\p{Foo}", r"invalid character class range: `\p{Foo}`"),
            (r"\p{greek}", r"invalid character class range: `\p{greek}`"),
            (r"\p{Greek", r"invalid character class range: `\p{Greek`"),
            (r"\p", r"invalid character class range: `\p`"),
            (r"\8", r"invalid escape sequence: `\8`"),
            (r"\1", r"invalid escape sequence: `\1`"),
            (r"\1x", r"invalid escape sequence: `\1`"),
            (r"\C", r"invalid escape sequence: `\C`"),
            (r"\q", r"invalid escape sequence: `\q`"),
            (r"\x", r"invalid escape sequence: `\x`"),
            (r"\xZ1", r"invalid escape sequence: `\xZ1`"),
            (r"\x{}", r"invalid escape sequence: `\x{}`"),
            (r"\x{zz}", r"invalid escape sequence: `\x{z`"),
            (r"\x{110000}", r"invalid escape sequence: `\x{110000`"),
            (r"\x{41", r"invalid escape sequence: `\x{41`"),
            (r"[\b]", r"invalid escape sequence: `\b`"),
            ("a\\", "trailing backslash at end of expression: ``"),
            ("(?x)a", "invalid or unsupported Perl syntax: `(?x`"),
            ("(?P=n)", "invalid or unsupported Perl syntax: `(?P`"),
            ("(?", "invalid or unsupported Perl syntax: `(?`"),
            ("(?i-)", "invalid or unsupported Perl syntax: `(?i-)`"),
            ("(?--i)", "invalid or unsupported Perl syntax: `(?--`"),
            ("(?P<n!>a)", "invalid named capture: `(?P<n!>`"),
            ("(?P<>a)", "invalid named capture: `(?P<>`"),
            ("(?P<name", "invalid named capture: `(?P<name`"),
        ];
        for (expr, want) in cases {
            assert_eq!(
                go_err(expr),
                format!("error parsing regexp: {want}"),
                "{expr}"
            );
        }
    }

    #[test]
    fn go_accepts_what_rust_alone_rejects() {
        assert!(matches("/api/{id}", "/api/{id}"));
        assert!(matches("a{,5}", "a{,5}"));
        assert!(matches("a{01}", "a{01}"));
        assert!(matches(r"\<b\>", "<b>"));
        assert!(!matches(r"\<b\>", "b"));
        assert!(matches(r"\Q*+?\E$", "x*+?"));
        assert!(matches(r"\Qabc", "abc"));
        assert!(matches("[[]", "["));
        assert!(matches("[a&&b]", "&"));
        assert!(matches("[+--]", ","));
        assert!(matches("[a-c--]", "-"));
        assert!(matches("[a~~b]", "~"));
        assert!(matches("[]a]", "]"));
        assert!(matches("[^]a]", "b"));
        assert!(matches("[a-]", "-"));
        assert!(matches(r"[\d-z]", "-"));
        assert!(matches("^*a", "a"));
        assert!(matches("a(?i)*", ""));
        assert!(matches("x(?i)*b", "B"));
        assert!(matches("(?ii)A", "a"));
        assert!(matches("(?i-i)A", "A"));
        assert!(!matches("(?i-i)A", "a"));
        assert!(matches("(?)a", "a"));
        assert!(matches("(?P<n>a)(?P<n>b)", "ab"));
        assert!(matches("(?<n>a)", "a"));
        assert!(matches(r"\12", "\n"));
        assert!(matches(r"\0", "\0"));
        assert!(matches(r"\_\/\-", "_/-"));
        assert!(matches(r"\x{D800}|b", "b"));
        assert!(!matches(r"\x{D800}", "\u{fffd}"));
        assert!(matches(r"[\x{D000}-\x{E000}]", "\u{E000}"));
        assert!(matches(r"[^\x00-\x{10FFFF}]|z", "z"));
        assert!(matches("a{2}", "aa"));
        assert!(matches("(a{10}){100}", &"a".repeat(1000)));
        assert!(matches("(a{0}){1000}b", "b"));
        assert!(matches(r"[^\x{D800}]", "\n"));
        assert!(!matches(r"[\x{D800}]", "\u{fffd}"));
    }

    #[test]
    fn ascii_perl_classes_like_go() {
        assert!(!matches(r"^\d$", "٣"));
        assert!(!matches(r"^\w$", "é"));
        assert!(!matches(r"^\s$", "\u{a0}"));
        assert!(matches(r"^\D$", "٣"));
        assert!(matches(r"^[\W]$", "é"));
        assert!(matches(r"a\b", "a é"));
        assert!(matches(r"^[[:alpha:]]+$", "abc"));
        assert!(!matches(r"^[[:alpha:]]+$", "é"));
        assert!(matches(r"^[[:^alpha:]]$", "1"));
        assert!(matches(r"^\p{Greek}+$", "αβ"));
        assert!(matches(r"^\pL$", "é"));
        assert!(matches(r"^\p{^L}$", "1"));
        assert!(matches(r"^\P{^L}$", "x"));
        assert!(matches(r"^[\p{Lu}\d]+$", "A1"));
    }

    #[test]
    fn flags_and_anchors_like_go() {
        assert!(matches("(?i)abc", "ABC"));
        assert!(matches("(?i:a)b", "Ab"));
        assert!(!matches("(?i:a)b", "AB"));
        assert!(matches("a(?i)b|C", "c"));
        assert!(!matches("^a$", "a\n"));
        assert!(matches("(?m)^a$", "b\na\n"));
        assert!(!matches("a.b", "a\nb"));
        assert!(matches("(?s)a.b", "a\nb"));
        assert!(matches(r"\Aab\z", "ab"));
        assert!(matches("(?U)a+", "a"));
        assert!(matches("/health", "/api/health/x"));
        assert!(!matches("^/health$", "/api/health"));
    }

    #[test]
    fn nesting_limits() {
        let nested = |open: &str, n: usize| format!("{}a{}", open.repeat(n), ")".repeat(n));
        assert!(compile(&nested("(", 200)).is_ok());
        assert!(compile(&nested("(a", 120)).is_ok());
        assert!(compile(&nested("(?:", 200)).is_ok());
        let star = format!("{}a{}", "(".repeat(120), ")*".repeat(120));
        assert!(compile(&star).is_ok());
        for deep in [
            nested("(", 1001),
            nested("(", 300),
            nested("(?:", 1500),
            format!("{}a{}", "(".repeat(200), ")*".repeat(200)),
        ] {
            let e = compile(&deep).unwrap_err();
            assert_eq!(e.code, Code::NestingDepth);
            assert_eq!(e.expr, deep);
        }
    }

    #[test]
    fn nesting_at_the_limit_fits_a_small_stack() {
        // API handlers run on 2 MiB tokio worker stacks; stay well inside that.
        let t = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                for open in ["(", "(?:", "(a", "[a-z]("] {
                    for n in [240, 260] {
                        let _ = compile(&format!("{}a{}", open.repeat(n), ")*".repeat(n)));
                        let _ = compile(&format!("{}a{}", open.repeat(n), ")".repeat(n)));
                    }
                }
            })
            .unwrap();
        assert!(t.join().is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        // Never panics; whatever the Go front end accepts, `regex` compiles
        // (up to the size limit).
        #[test]
        fn translate_is_total(expr in prop_oneof![
            any::<String>(),
            proptest::string::string_regex(r"[a-c()|*+?{}0-9,\[\]^$.\\:PpQEdDsSwWbBAzx<>=!i\-_&~ ]{0,24}").unwrap(),
        ]) {
            if let Ok(t) = translate(&expr) {
                match RegexBuilder::new(&t).nest_limit(RUST_NEST_LIMIT).size_limit(32 << 20).build() {
                    Ok(_) | Err(regex::Error::CompiledTooBig(_)) => {}
                    Err(e) if e.to_string().contains("nest") => {}
                    Err(e) => prop_assert!(false, "{:?} -> {:?}: {}", expr, t, e),
                }
            }
        }
    }
}
