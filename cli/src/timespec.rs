//! Parsing user-given times: `YYYY-MM-DD HH:MM[:SS]` and `YYYY-MM-DD` in
//! local time, RFC 3339 with an offset, and `now`, `today`, `yesterday`
//! (`today` and `yesterday` are that day's midnight, 00:00 local time).
//!
//! [`parse_arg`] is the `value_parser` of every flag taking a time, so a
//! time that does not parse is a usage error (exit 2) before anything is
//! opened. A relative word is read when the command line is parsed: when
//! the command runs.

use anyhow::{Context, Result, bail};
use jiff::{Zoned, civil, tz::TimeZone};

/// A time given on the command line: the text as written, and the instant
/// it was read as.
#[derive(Debug, Clone)]
pub(crate) struct TimeArg {
    pub(crate) text: String,
    pub(crate) time: Zoned,
}

impl TimeArg {
    /// Whether the text is relative to when the command runs (`now`,
    /// `today`, `yesterday`): how it was read is worth saying.
    pub(crate) fn is_relative(&self) -> bool {
        matches!(self.text.trim(), "now" | "today" | "yesterday")
    }

    /// The instant as printed in messages.
    pub(crate) fn read_as(&self) -> String {
        self.time.strftime("%Y-%m-%d %H:%M:%S %:z").to_string()
    }

    /// Says on stderr how a relative time given with `flag` was read (`--at
    /// yesterday read as 2026-11-24 00:00:00 +00:00`), after a command
    /// succeeded: not with --quiet, nor with --json (whose output a script
    /// parses; the word stays unambiguous there).
    pub(crate) fn note(&self, g: &crate::args::GlobalArgs, flag: &str) {
        if self.is_relative() && !g.quiet && !g.json {
            eprintln!(
                "vault: {flag} {} read as {}",
                self.text.trim(),
                self.read_as()
            );
        }
    }
}

/// The `value_parser` of flags taking a time.
pub(crate) fn parse_arg(input: &str) -> Result<TimeArg, String> {
    match parse(input) {
        Ok(time) => Ok(TimeArg {
            text: input.to_owned(),
            time,
        }),
        Err(e) => Err(format!("{e:#}")),
    }
}

pub(crate) fn parse(input: &str) -> Result<Zoned> {
    let s = input.trim();
    let tz = TimeZone::system();
    let now = Zoned::now();
    match s {
        "now" => return Ok(now),
        "today" => return Ok(now.date().to_zoned(tz)?),
        "yesterday" => return Ok(now.date().yesterday()?.to_zoned(tz)?),
        _ => {}
    }
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        // Keep the offset the user wrote.
        let offset = s
            .rfind(['+', '-'])
            .filter(|&i| i > 10)
            .and_then(|i| s.get(i..))
            .and_then(|o| {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let h: i32 = o.get(1..3)?.parse().ok()?;
                let m: i32 = o.get(4..6)?.parse().ok()?;
                jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
            })
            .unwrap_or(jiff::tz::Offset::UTC);
        return Ok(ts.to_zoned(TimeZone::fixed(offset)));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(dt) = civil::DateTime::strptime(fmt, s) {
            return dt
                .to_zoned(tz)
                .with_context(|| format!("time {s:?} does not exist in the local time zone"));
        }
    }
    if let Ok(d) = civil::Date::strptime("%Y-%m-%d", s) {
        return Ok(d.to_zoned(tz)?);
    }
    bail!(
        "cannot parse time {input:?}: use \"YYYY-MM-DD HH:MM:SS\" (local time), \"YYYY-MM-DD\", RFC 3339, now, today or yesterday"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_and_rfc3339() {
        assert!(parse("2026-01-10 03:00").is_ok());
        assert!(parse("2026-01-10 03:00:05").is_ok());
        assert!(parse("2026-01-10").is_ok());
        let z = parse("2026-01-10T03:00:00+01:00").unwrap();
        assert_eq!(z.offset().seconds(), 3600);
        assert_eq!(z.timestamp().as_second(), 1_768_010_400);
        assert!(parse("yesterday").is_ok());
        assert!(parse("tomorrow-ish").is_err());
        assert!(parse("2026-13-01").is_err());
    }

    #[test]
    fn relative_words_are_midnight_and_noted() {
        let t = parse_arg("yesterday").unwrap();
        assert!(t.is_relative());
        assert_eq!((t.time.hour(), t.time.minute(), t.time.second()), (0, 0, 0));
        assert!(!parse_arg("2026-01-10").unwrap().is_relative());
        assert!(
            parse_arg("bogus")
                .unwrap_err()
                .contains("cannot parse time")
        );
    }
}
