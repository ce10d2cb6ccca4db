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
pub(crate) struct Pattern {
    kind: PatternKind,
    /// Candidates are folded ([`fold_case`]) before matching: the pattern
    /// ignores case and is UTF-8, so it was folded too.
    fold: bool,
}

#[derive(Debug, Clone)]
enum PatternKind {
    Glob(GlobMatcher),
    Literal(Literal),
}

impl Pattern {
    /// See [`compile`]. Under `ignore_case` a UTF-8 pattern ignores case
    /// by Unicode's rules (`ärger` matches `ÄRGER`, as restic's
    /// `--iexclude` does): pattern and candidate are both lower-cased. A
    /// pattern that is not UTF-8 folds ASCII letters only.
    pub(crate) fn new(pattern: &[u8], any_depth: bool, ignore_case: bool) -> Result<Self, String> {
        let fold = ignore_case && std::str::from_utf8(pattern).is_ok();
        let folded;
        let text = if fold {
            folded = fold_case(pattern);
            &folded[..]
        } else {
            pattern
        };
        // An error names the pattern as given: folding changes no syntax,
        // so the pattern itself fails the same way.
        let compiled = compile(text, any_depth, ignore_case)
            .map_err(|e| compile(pattern, any_depth, ignore_case).err().unwrap_or(e))?;
        let kind = match compiled {
            Compiled::Glob(glob) => PatternKind::Glob(glob.compile_matcher()),
            Compiled::Literal(literal) => PatternKind::Literal(literal),
        };
        Ok(Self { kind, fold })
    }

    /// Whether the pattern matches `candidate`, byte for byte.
    pub(crate) fn is_match(&self, candidate: &Path) -> bool {
        let folded;
        let candidate = if self.fold {
            folded = fold_case(candidate.as_os_str().as_bytes());
            Path::new(OsStr::from_bytes(&folded))
        } else {
            candidate
        };
        match &self.kind {
            PatternKind::Glob(glob) => glob.is_match(candidate),
            PatternKind::Literal(literal) => literal.is_match(candidate.as_os_str().as_bytes()),
        }
    }
}

/// `bytes` lower-cased character by character where it is UTF-8 (as Go's
/// `strings.ToLower`, which restic uses, maps each rune on its own: no
/// final-sigma rule); bytes that are not UTF-8 stay as they are.
pub(crate) fn fold_case(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let mut buf = [0u8; 4];
        for c in chunk.valid().chars().flat_map(char::to_lowercase) {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        out.extend_from_slice(chunk.invalid());
    }
    out
}

/// `pattern` cleaned lexically as Go's `filepath.Clean` cleans restic's
/// patterns before matching: `//` is one `/`, `.` components go, `x/..`
/// goes (and `..` right after the root), a trailing `/` goes. An empty
/// result is `.`, as in Go. Bytes, not text: a name need not be UTF-8.
pub(crate) fn clean(pattern: &[u8]) -> Vec<u8> {
    let rooted = pattern.starts_with(b"/");
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in pattern.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match parts.last() {
                Some(&last) if last != b".." => {
                    parts.pop();
                }
                // `/..` is `/`; a relative pattern keeps its leading `..`.
                _ if rooted => {}
                _ => parts.push(part),
            },
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(pattern.len());
    if rooted {
        out.push(b'/');
    }
    out.extend_from_slice(&parts.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
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
    fn patterns_are_cleaned_as_go_cleans_paths() {
        let cleaned = |p: &[u8]| String::from_utf8(clean(p)).unwrap();
        assert_eq!(cleaned(b"/var/tmp//qa/t/a"), "/var/tmp/qa/t/a");
        assert_eq!(cleaned(b"./a"), "a");
        assert_eq!(cleaned(b"a/./b"), "a/b");
        assert_eq!(cleaned(b"/x/d1/../a"), "/x/a");
        assert_eq!(cleaned(b"a/b/../../c"), "c");
        assert_eq!(cleaned(b"../a"), "../a");
        assert_eq!(cleaned(b"a/../../b"), "../b");
        assert_eq!(cleaned(b"/../a"), "/a");
        assert_eq!(cleaned(b"cache/"), "cache");
        assert_eq!(cleaned(b"/"), "/");
        assert_eq!(cleaned(b"./"), ".");
        assert_eq!(cleaned(b"a/.."), ".");
        assert_eq!(clean(b"/d//\xff/./x"), b"/d/\xff/x");
    }

    #[test]
    fn ignoring_case_folds_unicode_in_utf8_patterns() {
        let ci = |pattern: &str, candidate: &[u8]| {
            Pattern::new(pattern.as_bytes(), false, true)
                .unwrap()
                .is_match(Path::new(OsStr::from_bytes(candidate)))
        };
        assert!(ci("ärger.txt", "ÄRGER.txt".as_bytes()));
        assert!(ci("ÄRGER.TXT", "ärger.txt".as_bytes()));
        assert!(ci("straße*", "STRAßE.md".as_bytes()));
        assert!(ci("ΟΔΟΣ", "οδοσ".as_bytes()), "no final-sigma rule");
        assert!(
            ci("*.jpg", b"\xff\xc3\x84.JPG"),
            "names that are not UTF-8 too"
        );
        assert!(!ci("ärger.txt", "ARGER.txt".as_bytes()));
        // Case-sensitive patterns are not folded.
        assert!(
            !Pattern::new("ärger".as_bytes(), false, false)
                .unwrap()
                .is_match(Path::new("ÄRGER"))
        );
        // A pattern that is not UTF-8 folds ASCII letters only.
        let literal = Pattern::new(b"\xff\xc3\x84B", false, true).unwrap();
        assert!(literal.is_match(Path::new(OsStr::from_bytes(b"\xff\xc3\x84b"))));
        assert!(!literal.is_match(Path::new(OsStr::from_bytes(b"\xff\xc3\xa4b"))));
        // Errors name the pattern as given.
        let err = Pattern::new("Ä[".as_bytes(), false, true).unwrap_err();
        assert!(err.contains("Ä["), "{err}");
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
