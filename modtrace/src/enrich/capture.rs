//! The kernel's captured bytes as record fields: bounded strings, fixed-size
//! names and the paths the kernel writes leaf first.
use modtrace_common::{BoundedStr, STR_ABSENT, STR_NULL, STR_OK, STR_TRUNCATED, STR_UNREADABLE};

use crate::record::fields::{escape_bytes, Captured};

fn captured_bytes<const N: usize>(s: &BoundedStr<N>) -> &[u8] {
    &s.bytes[..(s.len as usize).min(N)]
}

fn capture_error(state: u32) -> Option<&'static str> {
    match state {
        STR_OK | STR_TRUNCATED => None,
        STR_UNREADABLE => Some("unreadable"),
        STR_NULL => Some("null pointer"),
        STR_ABSENT => Some("absent"),
        _ => Some("unknown capture state"),
    }
}

pub(super) fn captured<const N: usize>(s: &BoundedStr<N>) -> Captured {
    match capture_error(s.state) {
        None => Captured {
            value: Some(escape_bytes(captured_bytes(s))),
            truncated: s.state == STR_TRUNCATED,
            error: None,
        },
        Some(error) => Captured {
            value: None,
            truncated: false,
            error: Some(error.into()),
        },
    }
}

/// A fixed-size, NUL-padded kernel name such as `comm`.
pub(super) fn c_name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    escape_bytes(&bytes[..end])
}

/// Rebuilds a path the kernel wrote leaf first, each component ended by its
/// NUL (`sctp.ko\0sctp\0net\0`). A cut
/// path lacks its root side and so does not start with `/`.
pub(super) fn path_from_leaf_first(bytes: &[u8], truncated: bool) -> String {
    let components: Vec<&[u8]> = bytes.split(|&b| b == 0).filter(|c| !c.is_empty()).collect();
    let mut path = String::new();
    for component in components.iter().rev() {
        if !(truncated && path.is_empty()) {
            path.push('/');
        }
        path.push_str(&escape_bytes(component));
    }
    if path.is_empty() && !truncated {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded<const N: usize>(text: &[u8], state: u32) -> BoundedStr<N> {
        let mut bytes = [0u8; N];
        bytes[..text.len()].copy_from_slice(text);
        BoundedStr {
            len: text.len() as u32,
            state,
            bytes,
        }
    }

    #[test]
    fn marks_truncated_and_unreadable_strings() {
        let ok = captured(&bounded::<16>(b"debug=1", STR_OK));
        assert_eq!(
            (ok.value.as_deref(), ok.truncated, ok.error),
            (Some("debug=1"), false, None)
        );
        let cut = captured(&bounded::<8>(b"abcdefg", STR_TRUNCATED));
        assert_eq!(
            (cut.value.as_deref(), cut.truncated),
            (Some("abcdefg"), true)
        );
        let bad = captured(&bounded::<8>(b"", STR_UNREADABLE));
        assert_eq!(
            (bad.value, bad.error.as_deref()),
            (None, Some("unreadable"))
        );
        let json = serde_json::to_string(&captured(&bounded::<8>(b"", STR_NULL))).unwrap();
        assert_eq!(
            json,
            r#"{"value":null,"truncated":false,"error":"null pointer"}"#
        );
        // A corrupt length never reads past the buffer.
        let mut wild = bounded::<4>(b"abcd", STR_OK);
        wild.len = 9999;
        assert_eq!(captured(&wild).value.as_deref(), Some("abcd"));
    }

    #[test]
    fn escapes_bytes_that_are_not_utf8() {
        assert_eq!(escape_bytes(b"a\xffb\xc3\xa9"), "a\\xffbé");
        assert_eq!(c_name(b"modprobe\0\0\0\0\0\0\0\0"), "modprobe");
        assert_eq!(c_name(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn rebuilds_paths_written_leaf_first() {
        assert_eq!(
            path_from_leaf_first(b"sctp.ko\0sctp\0net\0", false),
            "/net/sctp/sctp.ko"
        );
        assert_eq!(
            path_from_leaf_first(b"memfd:mtcall\0", false),
            "/memfd:mtcall"
        );
        assert_eq!(path_from_leaf_first(b"", false), "/");
        assert_eq!(path_from_leaf_first(b"c.ko\0b\0a\0", true), "a/b/c.ko");
    }
}
