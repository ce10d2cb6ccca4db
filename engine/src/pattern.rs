//! Glob patterns over byte paths, for include, exclude and find patterns.
//!
//! File names on Linux are bytes, not necessarily UTF-8, and so are the
//! names a snapshot holds. A glob ([`globset`]) matches the bytes of a
//! path, so `*.txt` matches `\xff.txt`; but it is compiled from a `&str`,
//! so a pattern that is itself not UTF-8 cannot be a glob. Such a pattern
//! is taken literally, byte for byte (which names one exact file, the use
//! for it); one that also holds glob characters is refused, since it could
//! only be matched in a way other than the one it reads as.

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The characters that make a pattern a glob rather than a literal name.
const GLOB_CHARS: &[u8] = b"*?[]{}\\";

/// A pattern as a byte path: not UTF-8, so matched literally.
#[derive(Debug, Clone)]
pub(crate) struct Literal {
    bytes: Vec<u8>,
    any_depth: bool,
    ignore_case: bool,
}

impl Literal {
    fn is_match(&self, candidate: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        if eq(candidate, &self.bytes) {
            return true;
        }
        // As `**/PATTERN`: the pattern's components end the candidate.
        self.any_depth
            && candidate
                .len()
                .checked_sub(self.bytes.len())
                .and_then(|at| candidate.split_at_checked(at))
                .is_some_and(|(head, tail)| head.ends_with(b"/") && eq(tail, &self.bytes))
    }
}

/// One compiled pattern, before it goes into a [`Pattern`] or a
/// [`PatternSet`].
pub(crate) enum Compiled {
    Glob(Glob),
    Literal(Literal),
}

/// Compiles `pattern`: a glob (`*` and `?` stay within a directory, `**`
/// crosses them) when it is UTF-8, else a literal byte path. With
/// `any_depth` it may match at any depth, as if it started with `**/`.
/// ASCII letters only are folded in a literal under `ignore_case`. The
/// error names the pattern, for the caller to say what kind it is.
pub(crate) fn compile(
    pattern: &[u8],
    any_depth: bool,
    ignore_case: bool,
) -> Result<Compiled, String> {
    match std::str::from_utf8(pattern) {
        Ok(text) => {
            let text = if any_depth {
                format!("**/{text}")
            } else {
                text.to_owned()
            };
            GlobBuilder::new(&text)
                .literal_separator(true)
                .case_insensitive(ignore_case)
                .build()
                .map(Compiled::Glob)
                .map_err(|e| format!("{:?}: {e}", OsStr::from_bytes(pattern)))
        }
        Err(_) if pattern.iter().any(|b| GLOB_CHARS.contains(b)) => Err(format!(
            "{:?}: a pattern that is not UTF-8 can only name a path literally, without glob characters ({})",
            OsStr::from_bytes(pattern),
            String::from_utf8_lossy(GLOB_CHARS)
        )),
        Err(_) => Ok(Compiled::Literal(Literal {
            bytes: pattern.to_vec(),
            any_depth,
            ignore_case,
        })),
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Glob(GlobMatcher),
    Literal(Literal),
}

impl Pattern {
    /// See [`compile`].
    pub(crate) fn new(pattern: &[u8], any_depth: bool, ignore_case: bool) -> Result<Self, String> {
        Ok(match compile(pattern, any_depth, ignore_case)? {
            Compiled::Glob(glob) => Pattern::Glob(glob.compile_matcher()),
            Compiled::Literal(literal) => Pattern::Literal(literal),
        })
    }

    /// Whether the pattern matches `candidate`, byte for byte.
    pub(crate) fn is_match(&self, candidate: &Path) -> bool {
        match self {
            Pattern::Glob(glob) => glob.is_match(candidate),
            Pattern::Literal(literal) => literal.is_match(candidate.as_os_str().as_bytes()),
        }
    }
}

/// Several patterns, matched at once.
#[derive(Debug)]
pub(crate) struct PatternSet {
    globs: GlobSet,
    literals: Vec<Literal>,
}

impl PatternSet {
    /// A set of compiled patterns.
    pub(crate) fn new(patterns: Vec<Compiled>) -> Result<Self, String> {
        let mut globs = GlobSetBuilder::new();
        let mut literals = Vec::new();
        for pattern in patterns {
            match pattern {
                Compiled::Glob(glob) => {
                    globs.add(glob);
                }
                Compiled::Literal(literal) => literals.push(literal),
            }
        }
        Ok(Self {
            globs: globs.build().map_err(|e| e.to_string())?,
            literals,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.globs.is_empty() && self.literals.is_empty()
    }

    /// Whether any pattern matches `candidate`, byte for byte.
    pub(crate) fn is_match(&self, candidate: &[u8]) -> bool {
        self.globs.is_match(Path::new(OsStr::from_bytes(candidate)))
            || self.literals.iter().any(|l| l.is_match(candidate))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn matches(pattern: &[u8], any_depth: bool, candidate: &[u8]) -> bool {
        Pattern::new(pattern, any_depth, false)
            .unwrap()
            .is_match(Path::new(OsStr::from_bytes(candidate)))
    }

    #[test]
    fn globs_match_names_that_are_not_utf8() {
        assert!(matches(b"*.txt", false, b"\xff.txt"));
        assert!(matches(b"/d/?.txt", false, b"/d/\xff.txt"));
        assert!(matches(b"d/*", true, b"/a/d/\xfe\xff"));
        assert!(!matches(b"/d/*", false, b"/d/\xff/x"));
    }

    #[test]
    fn a_pattern_that_is_not_utf8_is_a_literal_path() {
        assert!(matches(b"/d/\xff", false, b"/d/\xff"));
        assert!(!matches(b"/d/\xff", false, b"/d/\xfe"));
        assert!(!matches(b"/d/\xff", false, b"/x/d/\xff"));
        assert!(matches(b"d/\xff", true, b"/x/d/\xff"));
        assert!(matches(b"\xff", true, b"/x/\xff"));
        assert!(!matches(b"\xff", true, b"/x/a\xff"));
        assert!(!matches(b"\xff", false, b"/x/\xff"));
        assert!(
            Pattern::new(b"A\xff", false, true)
                .unwrap()
                .is_match(Path::new(OsStr::from_bytes(b"a\xff")))
        );
    }

    #[test]
    fn a_pattern_that_is_not_utf8_cannot_be_a_glob() {
        let err = Pattern::new(b"*\xff", false, false).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        assert!(err.contains("\\xFF"), "{err}");
    }

    #[test]
    fn sets_hold_globs_and_literals() {
        let set = PatternSet::new(vec![
            compile(b"*.log", false, false).unwrap(),
            compile(b"\xff", false, false).unwrap(),
        ])
        .unwrap();
        assert!(set.is_match(b"a.log"));
        assert!(set.is_match(b"\xff"));
        assert!(!set.is_match(b"\xfe"));
    }
}
