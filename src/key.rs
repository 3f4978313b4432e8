//! Normalised keys and directories.
//!
//! Every backend sees keys in one canonical form, built here before any I/O:
//!
//! * segments are separated by `/`; leading, trailing and repeated `/` are dropped, so
//!   `"a/"`, `"/a"`, `"a//"` and `"a"` are the same key;
//! * a segment may not be `.` or `..`;
//! * no control characters (C0, DEL, C1) and no characters that some server forbids in
//!   names (U+E000..=U+F8FF private use, U+FFF0..=U+FFFF specials; ZooKeeper rejects
//!   them), so a key valid on one backend is valid on all;
//! * the normalised key is at most [`MAX_KEY_LEN`] bytes.
//!
//! A [`Key`] is never empty. A [`Dir`] is a key or the root `""`, which is allowed for
//! `list`, `delete_tree` and `watch_tree`.
//!
//! A key that is already in normal form borrows the caller's string: building one
//! costs a single pass over its bytes and no allocation.

use std::borrow::Cow;
use std::fmt;

use crate::error::{Error, Result};

/// Longest normalised key in bytes. Chosen to fit every backend's limit with room for a
/// configured prefix (ZooKeeper paths and Consul URLs being the tightest).
pub const MAX_KEY_LEN: usize = 1024;

/// A validated, normalised key: non-empty, no leading/trailing/repeated `/`. It
/// borrows the string it was built from when that was already normal; use
/// [`Key::owned`] to keep one beyond that string's life.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key<'a>(Cow<'a, str>);

/// A validated, normalised directory: like [`Key`], or the root `""`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dir(String);

impl<'a> Key<'a> {
    /// Normalises and validates `raw`; `Error::InvalidKey` when it breaks a rule above.
    // Inline so the common borrowed case builds the key in place in the caller (no
    // 48-byte `Result` written to memory and read back).
    #[inline]
    pub fn new(raw: &'a str) -> Result<Self> {
        if already_normal(raw) {
            Ok(Key(Cow::Borrowed(raw)))
        } else {
            Self::normalised(raw)
        }
    }

    /// The general path of [`Key::new`]: a key that needs normalising or is invalid.
    #[cold]
    #[inline(never)]
    fn normalised(raw: &str) -> Result<Self> {
        let normalised = normalise_in_full(raw)?;
        if normalised.is_empty() {
            return Err(invalid(raw, "empty key"));
        }
        Ok(Key(Cow::Owned(normalised)))
    }

    /// True when `raw` is a key exactly as kvkit writes it: valid and already
    /// normalised (no leading, trailing or repeated `/`, no `.`/`..` segment, no
    /// control character, within [`MAX_KEY_LEN`]). Backends apply it to every key a
    /// server returns, so keys written by other tools in another form are never
    /// listed, watched or deleted by a tree operation.
    #[inline]
    pub fn is_normal(raw: &str) -> bool {
        already_normal(raw) || matches!(Key::new(raw), Ok(key) if key.as_str() == raw)
    }

    /// This key, owning its string.
    pub fn owned(&self) -> Key<'static> {
        Key(Cow::Owned(self.0.clone().into_owned()))
    }

    /// The normalised key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the key borrows the string it was built from (no allocation).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }

    /// The directory form of this key, for `list`-like operations below it.
    pub fn as_dir(&self) -> Dir {
        Dir(self.0.clone().into_owned())
    }

    /// Consumes the key, returning its string.
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl Dir {
    /// The root directory, below which every key lives.
    pub const fn root() -> Self {
        Dir(String::new())
    }

    /// Normalises and validates `raw`; the root is written `""` or `"/"`.
    pub fn new(raw: &str) -> Result<Self> {
        normalise(raw).map(Dir)
    }

    /// The normalised directory name; `""` for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root directory.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw string prefix shared by every key strictly below this directory:
    /// `"dir/"`, or `""` for the root. Never `"dir"`, which would match `dir2/x`.
    pub fn child_prefix(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            let mut prefix = String::with_capacity(self.0.len() + 1);
            prefix.push_str(&self.0);
            prefix.push('/');
            prefix
        }
    }

    /// This directory as a key, or `None` for the root.
    pub fn as_key(&self) -> Option<Key<'_>> {
        (!self.0.is_empty()).then_some(Key(Cow::Borrowed(self.0.as_str())))
    }

    /// True when `key` is strictly below this directory.
    pub fn contains(&self, key: &str) -> bool {
        if self.0.is_empty() {
            return !key.is_empty();
        }
        key.len() > self.0.len() + 1
            && key.starts_with(self.0.as_str())
            && key.as_bytes()[self.0.len()] == b'/'
    }
}

fn invalid(raw: &str, reason: &'static str) -> Error {
    Error::InvalidKey {
        key: raw.chars().take(MAX_KEY_LEN + 8).collect(),
        reason,
    }
}

/// True for characters no backend accepts in a key.
fn forbidden_char(c: char) -> bool {
    c.is_control()
        || ('\u{E000}'..='\u{F8FF}').contains(&c)
        || ('\u{FFF0}'..='\u{FFFF}').contains(&c)
}

/// True when `raw` is already a normal key made of printable ASCII: no leading,
/// trailing or repeated `/`, no `.`/`..` segment, within the length limit. The common
/// case of [`normalise`], so it reads eight bytes at a time (a word-at-a-time scan:
/// every byte checked for printable ASCII, and only the `/` positions visited).
fn already_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let len = bytes.len();
    if len == 0 || len > MAX_KEY_LEN {
        return false;
    }
    let mut segment_start = 0;
    let mut offset = 0;
    while offset < len {
        // The last word of a key longer than a word overlaps the one before it; the
        // overlapped bytes are checked again for printability but their `/`s masked off.
        let (base, word, seen) = if offset + 8 <= len {
            (offset, word_at(bytes, offset), 0)
        } else if len >= 8 {
            (len - 8, word_at(bytes, len - 8), offset - (len - 8))
        } else {
            (0, short_word(bytes), 0)
        };
        if !all_printable_ascii(word) {
            return false;
        }
        let mut slashes = lanes_equal_to(word, b'/') & (u64::MAX << (8 * seen));
        while slashes != 0 {
            let at = base + (slashes.trailing_zeros() / 8) as usize;
            if !plain_segment(&bytes[segment_start..at]) {
                return false;
            }
            segment_start = at + 1;
            slashes &= slashes - 1;
        }
        offset = base + 8;
    }
    plain_segment(&bytes[segment_start..])
}

/// A segment of a normal key: not empty, not `.` and not `..`.
#[inline]
fn plain_segment(segment: &[u8]) -> bool {
    match segment.len() {
        0 => false,
        1 => segment[0] != b'.',
        2 => segment != b"..",
        _ => true,
    }
}

/// The eight bytes at `offset` as a little-endian word (byte `i` in bits `8i..8i+8`).
#[inline]
fn word_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// A key shorter than a word, padded with `a` (printable, not `/`).
#[inline]
fn short_word(bytes: &[u8]) -> u64 {
    let mut word = LANES_01 * u64::from(b'a');
    for (i, &b) in bytes.iter().enumerate() {
        word = word & !(0xff << (8 * i)) | u64::from(b) << (8 * i);
    }
    word
}

const LANES_01: u64 = u64::from_le_bytes([0x01; 8]);
const LANES_7F: u64 = u64::from_le_bytes([0x7f; 8]);
const LANES_80: u64 = u64::from_le_bytes([0x80; 8]);

/// True when every byte is in `0x20..=0x7e`. A byte below `0x20` sets its high bit in
/// `word - 0x20..`, `0x7f` in `word + 0x01..`, and `0x80..` has it already; when every
/// byte is in range neither sum carries or borrows, so the test is exact.
#[inline]
fn all_printable_ascii(word: u64) -> bool {
    (word.wrapping_sub(LANES_01 * 0x20) | word.wrapping_add(LANES_01) | word) & LANES_80 == 0
}

/// The high bit of each byte of `word` equal to `byte`, exactly (no carries between
/// bytes: `(v & 0x7f) + 0x7f` stays below `0x100`).
#[inline]
fn lanes_equal_to(word: u64, byte: u8) -> u64 {
    let v = word ^ (LANES_01 * u64::from(byte));
    !(((v & LANES_7F) + LANES_7F) | v) & LANES_80
}

fn normalise(raw: &str) -> Result<String> {
    if already_normal(raw) {
        return Ok(raw.to_owned());
    }
    normalise_in_full(raw)
}

/// [`normalise`] without its fast path, for callers that already know `raw` is not
/// normal.
fn normalise_in_full(raw: &str) -> Result<String> {
    if raw.chars().any(forbidden_char) {
        return Err(invalid(raw, "control or reserved character"));
    }
    let mut out = String::with_capacity(raw.len());
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(invalid(raw, "'.' or '..' segment"));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(segment);
        if out.len() > MAX_KEY_LEN {
            return Err(invalid(raw, "longer than MAX_KEY_LEN bytes"));
        }
    }
    Ok(out)
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Dir {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slashes_are_normalised() {
        for raw in ["a/b", "/a/b", "a/b/", "//a///b//"] {
            assert_eq!(Key::new(raw).unwrap().as_str(), "a/b", "{raw:?}");
        }
    }

    #[test]
    fn empty_keys_are_rejected_but_root_dir_is_fine() {
        for raw in ["", "/", "///"] {
            assert!(
                matches!(Key::new(raw), Err(Error::InvalidKey { .. })),
                "{raw:?}"
            );
            assert!(Dir::new(raw).unwrap().is_root());
        }
    }

    #[test]
    fn dot_segments_and_control_characters_are_rejected() {
        for raw in [
            "a/./b", "..", "a/..", "a\nb", "a\u{0}b", "a\u{7f}", "a\u{85}", "\u{E000}", "\u{FFFF}",
        ] {
            assert!(
                matches!(Key::new(raw), Err(Error::InvalidKey { .. })),
                "{raw:?}"
            );
            assert!(
                matches!(Dir::new(raw), Err(Error::InvalidKey { .. })),
                "{raw:?}"
            );
        }
        // Dots inside a segment are ordinary characters.
        assert_eq!(Key::new("a/.b/c..").unwrap().as_str(), "a/.b/c..");
    }

    #[test]
    fn normal_keys_borrow_and_others_own() {
        assert!(Key::new("a/b").unwrap().is_borrowed());
        assert!(!Key::new("/a/b").unwrap().is_borrowed());
        let owned: Key<'static> = Key::new("a/b").unwrap().owned();
        assert_eq!(owned.as_str(), "a/b");
    }

    #[test]
    fn fast_path_agrees_with_the_general_rules() {
        let samples = [
            "a", "a/b", "a/b/c", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", ".a", "a..",
            "x y/z", "a\u{7f}b", "ü/ö", "a\tb", "a/b/", "//",
        ];
        for raw in samples {
            if already_normal(raw) {
                let slow: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
                assert_eq!(slow.join("/"), raw, "{raw:?} is normal");
                assert!(Key::new(raw).is_ok(), "{raw:?}");
            }
        }
        assert!(already_normal("a/b.c/..d"));
        for raw in ["/a", "a/", "a//b", "a/./b", "a/..", "a\u{7f}", "ü"] {
            assert!(!already_normal(raw), "{raw:?} takes the general path");
        }
    }

    #[test]
    fn is_normal_accepts_only_keys_in_normal_form() {
        for normal in ["a", "a/b", "ü/x", "a.b/..c", &"k".repeat(MAX_KEY_LEN)] {
            assert!(Key::is_normal(normal), "{normal:?}");
        }
        for foreign in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "a/.",
            "a\u{1}b",
            "a\u{7f}",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!Key::is_normal(foreign), "{foreign:?}");
        }
    }

    #[test]
    fn length_limit_applies_after_normalisation() {
        let at_limit = "x".repeat(MAX_KEY_LEN);
        assert!(Key::new(&format!("/{at_limit}/")).is_ok());
        let over = "x".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(Key::new(&over), Err(Error::InvalidKey { .. })));
    }

    #[test]
    fn dir_contains_only_strict_descendants() {
        let dir = Dir::new("a").unwrap();
        assert!(dir.contains("a/b"));
        assert!(dir.contains("a/b/c"));
        assert!(!dir.contains("a"));
        assert!(!dir.contains("ab"));
        assert!(!dir.contains("ab/c"));
        assert_eq!(dir.child_prefix(), "a/");
        let root = Dir::root();
        assert!(root.contains("a"));
        assert_eq!(root.child_prefix(), "");
    }

    /// The rules written plainly, to check the single-pass implementation against.
    fn reference(raw: &str) -> Option<String> {
        if raw.chars().any(forbidden_char) {
            return None;
        }
        let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return None;
        }
        let key = segments.join("/");
        (!key.is_empty() && key.len() <= MAX_KEY_LEN).then_some(key)
    }

    proptest::proptest! {
        #[test]
        fn normalisation_matches_the_reference(raw in "[ab./\\x7f\\u{e000}ü ]{0,12}") {
            let ours = Key::new(&raw).ok().map(Key::into_string);
            proptest::prop_assert_eq!(ours, reference(&raw));
        }

        // Long enough to cross the fast path's 8-byte words at every offset.
        #[test]
        fn fast_path_matches_the_reference(raw in "[a./~ \\x00\\x1f\\x7f\\u{80}é]{0,40}") {
            let normal_ascii = raw.bytes().all(|b| (0x20..0x7f).contains(&b))
                && reference(&raw).as_deref() == Some(raw.as_str());
            proptest::prop_assert_eq!(already_normal(&raw), normal_ascii, "{:?}", raw);
            let ours = Key::new(&raw).ok().map(Key::into_string);
            proptest::prop_assert_eq!(ours, reference(&raw));
        }
    }
}
