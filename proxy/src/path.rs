//! Request path normalisation before routing (as nginx does, and Envoy with `normalize_path`).
//!
//! Routing by prefix is only as strong as the path it sees: `/api/../admin`,
//! `/api/%2e%2e/admin` and `/api/..%2fadmin` all start with `/api/` but a backend resolves
//! them to `/admin`. So the path is brought to one canonical spelling first, and that spelling
//! is both what the router matches and what the backend receives:
//!
//! 1. percent-escapes of unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) are
//!    decoded; every other escape stays, its hex in upper case; a `%` not followed by two hex
//!    digits is an error;
//! 2. escaped slashes (`%2F`, and `%5C` and a bare `\`, which some servers treat as `/`) are
//!    rejected, kept opaque (`%2F`, `%5C`: never a separator, so never part of a dot segment),
//!    or decoded to `/` before step 4, as [`EscapedSlashes`] says;
//! 3. optionally, runs of `/` become one;
//! 4. dot segments are removed (RFC 3986 §5.2.4); `..` above the root stays at `/`.
//!
//! Invariant: the output starts with `/`, holds no `.`/`..` segment and no escape of an
//! unreserved character, so normalising it again changes nothing.

use std::borrow::Cow;

use crate::config::EscapedSlashes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid percent-escape in the path")]
    InvalidEscape,
    #[error("escaped slash or backslash in the path")]
    EscapedSlash,
    #[error("the path is not valid UTF-8")]
    NotUtf8,
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Steps 1 and 2: one pass over the bytes.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
    let b = path.as_bytes();
    // Bytes, not chars: a path may hold raw non-ASCII (UTF-8) bytes, which pass unchanged.
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (byte, escaped) = if b[i] == b'%' {
            let hi = b.get(i + 1).copied().and_then(unhex);
            let lo = b.get(i + 2).copied().and_then(unhex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidEscape);
            };
            i += 3;
            (hi << 4 | lo, true)
        } else {
            i += 1;
            (b[i - 1], false)
        };
        if byte == b'\\' || (escaped && byte == b'/') {
            match escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => out.push(b'/'),
                EscapedSlashes::Keep => out.extend_from_slice(if byte == b'/' { b"%2F" } else { b"%5C" }),
            }
        } else if !escaped || unreserved(byte) {
            out.push(byte);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
        }
    }
    // Raw bytes were copied whole and escapes decode only to ASCII, so valid input stays valid.
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Step 4 (RFC 3986 §5.2.4) on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." | ".." => {
                if seg == ".." {
                    stack.pop();
                }
                // `/a/b/..` is `/a/`: a final dot segment leaves the directory's slash.
                if last {
                    stack.push("");
                }
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&stack.join("/"));
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The normalised form of a request path (without its query). Paths that do not start with
/// `/` (`*` of `OPTIONS *`) are returned as they are.
pub fn normalize<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, opts.escaped_slashes)?;
    let merged = if opts.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    let out = remove_dot_segments(&merged);
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECT: PathOptions = PathOptions {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn with(merge: bool, es: EscapedSlashes) -> PathOptions {
        PathOptions {
            merge_slashes: merge,
            escaped_slashes: es,
        }
    }

    #[test]
    fn table() {
        use EscapedSlashes::*;
        let cases: &[(&str, PathOptions, Result<&str, PathError>)] = &[
            // The three ways past a `/api/` route.
            ("/api/../admin", REJECT, Ok("/admin")),
            ("/api/%2e%2e/admin", REJECT, Ok("/admin")),
            ("/api/%2E%2E/admin", REJECT, Ok("/admin")),
            ("/api/..%2fadmin", REJECT, Err(PathError::EscapedSlash)),
            ("/api/..%2fadmin", with(false, Keep), Ok("/api/..%2Fadmin")),
            ("/api/..%2fadmin", with(false, Decode), Ok("/admin")),
            ("/api/..%5cadmin", with(false, Decode), Ok("/admin")),
            ("/api/..%5Cadmin", with(false, Keep), Ok("/api/..%5Cadmin")),
            ("/api/..\\admin", REJECT, Err(PathError::EscapedSlash)),
            // Unreserved characters decoded, other escapes kept in upper case.
            ("/%61%62c%7e%2D%5f", REJECT, Ok("/abc~-_")),
            ("/a%20b%3f%c3%a9", REJECT, Ok("/a%20b%3F%C3%A9")),
            ("/a%25b", REJECT, Ok("/a%25b")),
            // Invalid escapes.
            ("/a%zz", REJECT, Err(PathError::InvalidEscape)),
            ("/a%4", REJECT, Err(PathError::InvalidEscape)),
            ("/a%", REJECT, Err(PathError::InvalidEscape)),
            // Dot segments (RFC 3986 §5.2.4 examples, absolute paths).
            ("/a/b/c/./../../g", REJECT, Ok("/a/g")),
            ("/mid/content=5/../6", REJECT, Ok("/mid/6")),
            ("/a/b/..", REJECT, Ok("/a/")),
            ("/a/b/.", REJECT, Ok("/a/b/")),
            ("/..", REJECT, Ok("/")),
            ("/../../x", REJECT, Ok("/x")),
            ("/.", REJECT, Ok("/")),
            ("/", REJECT, Ok("/")),
            ("/a/.b/..c/...", REJECT, Ok("/a/.b/..c/...")),
            ("/a/b/", REJECT, Ok("/a/b/")),
            // Repeated slashes: kept unless merged; `..` consumes an empty segment.
            ("/a//b", REJECT, Ok("/a//b")),
            ("/a//b", with(true, Reject), Ok("/a/b")),
            ("//a///b/", with(true, Reject), Ok("/a/b/")),
            ("/a//../b", REJECT, Ok("/a/b")),
            ("/a%2f%2fb", with(true, Decode), Ok("/a/b")),
            // Not an origin-form path.
            ("*", REJECT, Ok("*")),
        ];
        for (input, opts, want) in cases {
            let got = normalize(input, opts).map(|c| c.into_owned());
            assert_eq!(got, want.map(str::to_string), "{input} {opts:?}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in [
            "/api/%2e%2e/x%2fy/./z//",
            "/a%41%2F%5c/..",
            "/%7E/%7e/%25",
            "/caf\u{e9}/./%2e%2E/\u{2603}",
        ] {
            for es in [EscapedSlashes::Keep, EscapedSlashes::Decode] {
                for merge in [false, true] {
                    let o = with(merge, es);
                    let once = normalize(p, &o).expect("valid").into_owned();
                    assert_eq!(normalize(&once, &o).expect("valid"), once, "{p} {o:?}");
                }
            }
        }
    }

    #[test]
    fn raw_non_ascii_bytes_pass_unchanged() {
        assert_eq!(normalize("/caf\u{e9}/x/../y", &REJECT).expect("valid"), "/caf\u{e9}/y");
        assert_eq!(normalize("/\u{2603}/%41", &REJECT).expect("valid"), "/\u{2603}/A");
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        assert!(matches!(normalize("/api/v1/x", &REJECT), Ok(Cow::Borrowed(_))));
    }
}
