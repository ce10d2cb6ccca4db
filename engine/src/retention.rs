//! Retention policies ("forget"): which snapshots to keep and which to remove.
//!
//! The rules are the same as restic's `forget` command (restic 0.16 and
//! later, with reasons worded as restic 0.18 words them). A policy that works
//! with restic does the same thing here.
//!
//! **Groups.** Snapshots are first split into groups. By default a group is
//! one host plus one set of backed-up paths; the order of the paths does not
//! matter. Grouping can use any mix of host, paths and tags, or nothing, which
//! puts every snapshot in one group. The policy runs on each group on its own:
//! what happens in one group never changes what happens in another. Inside a
//! group, snapshots are ordered newest first by the instant they were taken.
//! Snapshots with the same time keep the order they were given in.
//!
//! **Keeping.** A snapshot is kept if at least one rule keeps it. Every rule
//! that keeps it is listed as a reason. All other snapshots are removed.
//!
//! * `last N` keeps the N newest snapshots.
//! * `hourly`, `daily`, `weekly`, `monthly` and `yearly N` each look at one
//!   kind of period: the clock hour, the calendar day, the ISO 8601 week, the
//!   calendar month or the calendar year. Going from the newest snapshot to
//!   the oldest, the rule keeps a snapshot when its period differs from the
//!   period of the last snapshot the rule kept, and stops after keeping N. The
//!   result is the newest snapshot of each of the N most recent periods *that
//!   have a snapshot*. Periods with no snapshot are skipped and use up
//!   nothing, so the result does not depend on when `forget` runs. Periods are
//!   read in the wall-clock time of the UTC offset stored with each snapshot,
//!   not in UTC and not in the time zone of the machine running `forget`.
//!   Weeks are ISO weeks: they start on Monday and belong to the ISO
//!   week-year, so Thursday 2020-12-31 and Friday 2021-01-01 are both in week
//!   53 of 2020. Years are calendar years. A count of `unlimited` never runs
//!   out. A count of 0 turns the rule off.
//! * **The oldest snapshot.** If a count rule still has some of its count left
//!   when it reaches the oldest snapshot of the group, it keeps that snapshot
//!   too, even if it shares a period with a newer snapshot the rule already
//!   kept. This keeps the whole history of a young repository. The reason is
//!   then shown as, for example, "oldest daily snapshot". Keeping it uses up
//!   one count, like any other snapshot the rule keeps.
//! * `within D` keeps every snapshot that is strictly newer than `latest - D`.
//!   Here `latest` is the time of the newest snapshot in the group that is
//!   older than the current time. Snapshots dated in the future are left out
//!   when finding `latest`, but they are newer than the cutoff and so are
//!   kept. If every snapshot is in the future, `latest` is the year 1, so
//!   everything is kept. The cutoff counts back from the newest snapshot, not
//!   from now, so a machine that stops making backups keeps its last ones.
//! * `within-hourly`, `within-daily`, `within-weekly`, `within-monthly` and
//!   `within-yearly D` work like the count rules with no count, but only on
//!   snapshots newer than `latest - D`. They also keep the oldest snapshot of
//!   the group if it is newer than the cutoff ("oldest daily within 30d").
//! * A duration `D` is written `1y2m3d4h`: years, months (`m` means months),
//!   days and hours. Any of the parts may be left out, but the ones given must
//!   be in that order. To get the cutoff, the years, months and days are
//!   subtracted from the calendar date of `latest`, in its stored UTC offset,
//!   the same way Go's `AddDate` does it. Then the hours are subtracted as
//!   exact hours. A date that does not exist rolls over into the next month
//!   instead of being clamped to the month's last day: 31 March minus `1m` is
//!   "31 February", which is 3 March (2 March in a leap year), and 29 February
//!   2024 minus `1y` is 1 March 2023. 31 January minus `1m` is 31 December.
//! * `tags` keeps every snapshot that has all the tags of at least one of the
//!   given tag lists. An empty list matches every snapshot. A list whose first
//!   tag is the empty string matches snapshots that have no tags. Snapshots
//!   kept by a tag list still go through the count rules and use up their
//!   counts. For example, with `daily 1` and tag `release`, a newest snapshot
//!   tagged `release` is the daily snapshot too, and no other daily snapshot
//!   is kept.
//!
//! **Safety.** A policy with no rules is refused, so that forgetting without a
//! policy never removes anything. If a policy would remove every snapshot of a
//! group, for example because a tag in the policy is misspelt, the whole run
//! is refused and nothing is removed in any group.
//!
//! One difference from restic is on purpose. restic does the date arithmetic
//! for `within` in the machine's local time zone when a snapshot's stored
//! offset matches that zone. Here it is always done in the stored fixed
//! offset. The result is therefore the same wherever `forget` runs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::{Timestamp, Zoned};
use serde::{Serialize, Serializer};

/// What retention needs to know about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotMeta {
    /// The snapshot's id. Retention only carries it along.
    pub id: String,
    /// When the snapshot was taken, in the UTC offset it was stored with.
    /// Periods (day, week, ...) are worked out in this offset.
    pub time: Zoned,
    /// Host the snapshot was taken on.
    pub hostname: String,
    /// Paths that were backed up. Their order does not matter.
    pub paths: Vec<String>,
    /// The snapshot's tags.
    pub tags: Vec<String>,
}

/// How many snapshots a count rule may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    /// Keep at most this many. `Limited(0)` turns the rule off.
    Limited(u32),
    /// Never run out. Written `unlimited` on the command line.
    Unlimited,
}

impl Count {
    /// Whether the rule can still keep snapshots.
    fn has_left(self) -> bool {
        self != Count::Limited(0)
    }

    fn consume(&mut self) {
        if let Count::Limited(n) = self {
            *n = n.saturating_sub(1);
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Limited(n) => write!(f, "{n}"),
            Count::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for Count {
    type Err = ParseError;

    /// Parses `unlimited` or a number that is not negative. Like restic 0.16+,
    /// `-1` is refused: it must be written `unlimited`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "unlimited" {
            return Ok(Count::Unlimited);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Count::Limited)
                .map_err(|_| ParseError::CountTooLarge(s.to_owned()));
        }
        Err(ParseError::InvalidCount(s.to_owned()))
    }
}

/// A calendar duration such as `1y2m3d4h` (years, months, days, hours).
///
/// It is a calendar length, not a fixed number of seconds: see the module
/// docs for how it is subtracted from a date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetentionDuration {
    /// Calendar years.
    pub years: u32,
    /// Calendar months.
    pub months: u32,
    /// Calendar days.
    pub days: u32,
    /// Exact hours.
    pub hours: u32,
}

impl RetentionDuration {
    /// True if every part is zero. A zero duration turns its rule off, as in
    /// restic.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The duration units, in the only order they may be written.
const DURATION_UNITS: [char; 4] = ['y', 'm', 'd', 'h'];

impl FromStr for RetentionDuration {
    type Err = ParseError;

    /// Parses `1y2m3d4h`. Any of the parts may be left out, but the ones given
    /// must be in this order and each at most once. Spaces around the whole
    /// string are ignored. restic also accepts parts in any order, repeated
    /// parts and negative numbers. Those forms are refused here because they
    /// are almost always typos.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(ParseError::EmptyDuration);
        }
        let mut duration = RetentionDuration::default();
        // Index into DURATION_UNITS of the first unit that may still come.
        let mut next_unit = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (number, tail) = match rest.split_at_checked(digits) {
                Some(parts) if digits > 0 => parts,
                _ => return Err(ParseError::ExpectedNumber(input.to_owned())),
            };
            let value: u32 = number
                .parse()
                .map_err(|_| ParseError::DurationTooLarge(input.to_owned()))?;
            let mut chars = tail.chars();
            let unit = chars.next().ok_or_else(|| ParseError::MissingUnit {
                input: input.to_owned(),
                number: value,
            })?;
            let position = DURATION_UNITS
                .iter()
                .position(|&u| u == unit)
                .ok_or_else(|| ParseError::InvalidUnit {
                    input: input.to_owned(),
                    unit,
                })?;
            if position < next_unit {
                return Err(ParseError::UnitOutOfOrder {
                    input: input.to_owned(),
                    unit,
                });
            }
            match position {
                0 => duration.years = value,
                1 => duration.months = value,
                2 => duration.days = value,
                _ => duration.hours = value,
            }
            next_unit = position + 1;
            rest = chars.as_str();
        }
        Ok(duration)
    }
}

impl fmt::Display for RetentionDuration {
    /// Prints the parts that are not zero, e.g. `1y3d`. A zero duration
    /// prints as `0h` so that printing and parsing again gives the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        let parts = [self.years, self.months, self.days, self.hours];
        for (value, unit) in parts.into_iter().zip(DURATION_UNITS) {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

/// Which snapshots to keep. Rules are OR'ed: a snapshot is kept if any rule
/// keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep the newest N snapshots.
    pub last: Option<Count>,
    /// Keep the newest snapshot of each of the N most recent hours that have one.
    pub hourly: Option<Count>,
    /// Same, per calendar day.
    pub daily: Option<Count>,
    /// Same, per ISO week.
    pub weekly: Option<Count>,
    /// Same, per calendar month.
    pub monthly: Option<Count>,
    /// Same, per calendar year.
    pub yearly: Option<Count>,
    /// Keep every snapshot newer than the group's latest snapshot minus this.
    pub within: Option<RetentionDuration>,
    /// Keep the newest snapshot of every hour within this of the latest one.
    pub within_hourly: Option<RetentionDuration>,
    /// Same, per calendar day.
    pub within_daily: Option<RetentionDuration>,
    /// Same, per ISO week.
    pub within_weekly: Option<RetentionDuration>,
    /// Same, per calendar month.
    pub within_monthly: Option<RetentionDuration>,
    /// Same, per calendar year.
    pub within_yearly: Option<RetentionDuration>,
    /// Keep snapshots that have every tag of at least one of these lists.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// True if no rule is switched on. `Limited(0)` counts and zero durations
    /// are off, as in restic. Any tag list, even an empty one, is a rule.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        let durations = [
            self.within,
            self.within_hourly,
            self.within_daily,
            self.within_weekly,
            self.within_monthly,
            self.within_yearly,
        ];
        self.tags.is_empty()
            && counts.iter().flatten().all(|c| !c.has_left())
            && durations.iter().flatten().all(RetentionDuration::is_zero)
    }
}

/// The fields that split snapshots into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupBy {
    /// Group by hostname.
    pub host: bool,
    /// Group by the set of paths.
    pub paths: bool,
    /// Group by the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    /// `host,paths`, as in restic.
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl FromStr for GroupBy {
    type Err = ParseError;

    /// Parses a comma-separated list of `host`, `paths` and `tags` (`hosts`,
    /// `path` and `tag` also work). The empty string means no grouping.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut group_by = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for option in s.split(',').map(str::trim) {
            match option {
                "host" | "hosts" => group_by.host = true,
                "path" | "paths" => group_by.paths = true,
                "tag" | "tags" => group_by.tags = true,
                "" => {}
                other => return Err(ParseError::UnknownGroupBy(other.to_owned())),
            }
        }
        Ok(group_by)
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            (self.host, "host"),
            (self.paths, "paths"),
            (self.tags, "tags"),
        ];
        let names: Vec<&str> = fields
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

impl GroupBy {
    fn key_for(self, snapshot: &SnapshotMeta) -> GroupKey {
        self.key(&snapshot.hostname, &snapshot.paths, &snapshot.tags)
    }

    /// The group of a snapshot with these host, paths and tags.
    #[must_use]
    pub fn key(self, hostname: &str, paths: &[String], tags: &[String]) -> GroupKey {
        let sorted = |list: &[String]| {
            let mut list = list.to_vec();
            list.sort();
            list
        };
        GroupKey {
            hostname: self.host.then(|| hostname.to_owned()),
            paths: self.paths.then(|| sorted(paths)),
            tags: self.tags.then(|| sorted(tags)),
        }
    }
}

/// What identifies a group. A field is `None` when it is not used for
/// grouping. Paths and tags are sorted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GroupKey {
    /// The group's hostname, when grouping by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The group's sorted paths, when grouping by paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// The group's sorted tags, when grouping by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    /// Written like restic writes it: `host h, path [/a /b], tags [x]`. Empty
    /// fields are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(host) = self.hostname.as_ref().filter(|h| !h.is_empty()) {
            parts.push(format!("host {host}"));
        }
        if let Some(paths) = self.paths.as_ref().filter(|p| !p.is_empty()) {
            parts.push(format!("path [{}]", paths.join(" ")));
        }
        match self.tags.as_ref() {
            Some(tags) if !tags.is_empty() => parts.push(format!("tags [{}]", tags.join(" "))),
            // Grouped by tags, the untagged snapshots: say so rather than
            // print "snapshots for :".
            Some(_) => parts.push("no tags".into()),
            None => {}
        }
        f.write_str(&parts.join(", "))
    }
}

/// The kind of period a periodic rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Clock hour, e.g. 2021-03-04 17h.
    Hourly,
    /// Calendar day.
    Daily,
    /// ISO 8601 week of the ISO week-year.
    Weekly,
    /// Calendar month.
    Monthly,
    /// Calendar year.
    Yearly,
}

impl Period {
    const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// The period `time` is in, read in its own stored offset. The number is
    /// built the way restic builds it (e.g. YYYYMMDD), so that keys compare
    /// equal in exactly the same cases, including odd dates before year 1.
    fn key(self, time: &Zoned) -> i64 {
        let dt = time.datetime();
        let year = i64::from(dt.year());
        let month = i64::from(dt.month());
        let day = i64::from(dt.day());
        match self {
            Period::Hourly => year * 1_000_000 + month * 10_000 + day * 100 + i64::from(dt.hour()),
            Period::Daily => year * 10_000 + month * 100 + day,
            Period::Weekly => {
                let week = dt.date().iso_week_date();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            Period::Monthly => year * 100 + month,
            Period::Yearly => year,
        }
    }
}

/// Why a snapshot is kept. Printed the way restic prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeepReason {
    /// One of the `last` N snapshots: "last snapshot".
    Last,
    /// Kept by a periodic count rule: "daily snapshot". `oldest` is set when
    /// the snapshot is kept only because it is the group's oldest and the rule
    /// had count left: "oldest daily snapshot".
    Periodic {
        /// The rule's period.
        period: Period,
        /// Kept under the oldest-snapshot rule.
        oldest: bool,
    },
    /// Newer than latest minus the duration: "within 30d".
    Within(RetentionDuration),
    /// Kept by a `within-*` rule: "daily within 30d", or "oldest daily within
    /// 30d" under the oldest-snapshot rule.
    WithinPeriodic {
        /// The rule's period.
        period: Period,
        /// The rule's duration.
        within: RetentionDuration,
        /// Kept under the oldest-snapshot rule.
        oldest: bool,
    },
    /// Has every tag of this list: "has tags [release, signed]".
    Tags(Vec<String>),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = |yes: bool| if yes { "oldest " } else { "" };
        match self {
            KeepReason::Last => f.write_str("last snapshot"),
            KeepReason::Periodic { period, oldest: o } => {
                write!(f, "{}{} snapshot", oldest(*o), period.name())
            }
            KeepReason::Within(d) => write!(f, "within {d}"),
            KeepReason::WithinPeriodic {
                period,
                within,
                oldest: o,
            } => write!(f, "{}{} within {within}", oldest(*o), period.name()),
            KeepReason::Tags(tags) => write!(f, "has tags [{}]", tags.join(", ")),
        }
    }
}

impl Serialize for KeepReason {
    /// Serialized as its text, like the `matches` strings in restic's JSON.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What happens to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Position of the snapshot in the slice given to [`apply`].
    pub index: usize,
    /// The snapshot.
    pub snapshot: SnapshotMeta,
    /// True if kept, false if removed.
    pub keep: bool,
    /// Why it is kept, in restic's order: tags, within, last, periodic counts
    /// (hourly to yearly), within-periodic (hourly to yearly). Empty if
    /// removed.
    pub reasons: Vec<KeepReason>,
}

/// The result for one group. Both lists are newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub key: GroupKey,
    /// Snapshots that are kept.
    pub keep: Vec<Decision>,
    /// Snapshots that are removed.
    pub remove: Vec<Decision>,
}

/// Why [`apply`] refused to make a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// The policy has no rules. Forgetting without a policy is refused rather
    /// than removing everything.
    #[error("no retention policy was given; refusing to forget snapshots without one")]
    EmptyPolicy,
    /// The policy would remove every snapshot of a group.
    #[error(
        "refusing to delete last snapshot of snapshot group \"{group}\": the policy keeps none of its {snapshots} snapshots"
    )]
    WouldRemoveAll {
        /// The group that would be emptied.
        group: GroupKey,
        /// How many snapshots the group has.
        snapshots: usize,
    },
}

/// Why a duration, count or grouping could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The duration string was empty.
    #[error("empty duration; expected something like \"1y2m3d4h\"")]
    EmptyDuration,
    /// A number was expected (units must follow a number).
    #[error("invalid duration {0:?}: expected a number before each unit, as in \"1y2m3d4h\"")]
    ExpectedNumber(String),
    /// A number had no unit after it.
    #[error("invalid duration {input:?}: no unit after number {number}; use y, m, d or h")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number without a unit.
        number: u32,
    },
    /// A unit other than y, m, d, h.
    #[error("invalid duration {input:?}: unknown unit {unit:?}; use y, m (months), d or h")]
    InvalidUnit {
        /// The whole input.
        input: String,
        /// The bad unit.
        unit: char,
    },
    /// A unit was repeated or came after a smaller one.
    #[error(
        "invalid duration {input:?}: unit {unit:?} repeated or out of order; write years, months, days, hours in that order"
    )]
    UnitOutOfOrder {
        /// The whole input.
        input: String,
        /// The unit that came too late.
        unit: char,
    },
    /// A number in a duration does not fit in 32 bits.
    #[error("invalid duration {0:?}: number too large")]
    DurationTooLarge(String),
    /// A count that is neither a number nor `unlimited`.
    #[error("invalid count {0:?}: expected a number that is not negative, or \"unlimited\"")]
    InvalidCount(String),
    /// A count that does not fit in 32 bits.
    #[error("invalid count {0:?}: number too large (use \"unlimited\" to keep all)")]
    CountTooLarge(String),
    /// A grouping field other than host, paths, tags.
    #[error("unknown grouping option {0:?}; expected host, paths or tags")]
    UnknownGroupBy(String),
}

/// Splits `snapshots` into groups by `group_by` and applies `policy` to each
/// group. `now` is only used to leave future-dated snapshots out when finding
/// the latest snapshot for the `within` rules.
///
/// Groups come back sorted by [`GroupKey`]. Every input snapshot appears in
/// exactly one group, either in `keep` or in `remove`.
///
/// # Errors
///
/// [`RetentionError::EmptyPolicy`] if the policy has no rule, and
/// [`RetentionError::WouldRemoveAll`] if some group would lose all its
/// snapshots. In both cases nothing may be removed.
pub fn apply(
    snapshots: &[SnapshotMeta],
    policy: &KeepPolicy,
    group_by: GroupBy,
    now: Timestamp,
) -> Result<Vec<GroupPlan>, RetentionError> {
    if policy.is_empty() {
        return Err(RetentionError::EmptyPolicy);
    }
    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (index, snapshot) in snapshots.iter().enumerate() {
        groups
            .entry(group_by.key_for(snapshot))
            .or_default()
            .push(index);
    }
    groups
        .into_iter()
        .map(|(key, members)| plan_group(key, members, snapshots, policy, now))
        .collect()
}

/// The key restic gives a rule before it has kept anything. Using restic's
/// value rather than "no key" keeps even year -1 behaving the same way.
const NO_KEY: i64 = -1;

struct CountRule {
    period: Period,
    left: Count,
    last_key: i64,
}

struct WithinRule {
    period: Period,
    within: RetentionDuration,
    cutoff: i128,
    last_key: i64,
}

fn plan_group(
    key: GroupKey,
    mut members: Vec<usize>,
    snapshots: &[SnapshotMeta],
    policy: &KeepPolicy,
    now: Timestamp,
) -> Result<GroupPlan, RetentionError> {
    // Newest first. sort_by is stable, so equal times keep their input order,
    // as restic's sort.Stable does. The order decides which of several
    // snapshots with the same time is kept.
    members.sort_by(|&a, &b| {
        snapshots[b]
            .time
            .timestamp()
            .cmp(&snapshots[a].time.timestamp())
    });
    let ordered: Vec<&SnapshotMeta> = members.iter().map(|&i| &snapshots[i]).collect();

    let anchor = Anchor::latest(&ordered, now);
    let active = |d: Option<RetentionDuration>| d.filter(|d| !d.is_zero());
    let within = active(policy.within).map(|d| (d, anchor.cutoff(d)));
    let mut last = policy.last.filter(|c| c.has_left());
    let counts = [
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
        policy.yearly,
    ];
    let mut count_rules: Vec<CountRule> = Period::ALL
        .into_iter()
        .zip(counts)
        .filter_map(|(period, count)| {
            let left = count.filter(|c| c.has_left())?;
            Some(CountRule {
                period,
                left,
                last_key: NO_KEY,
            })
        })
        .collect();
    let durations = [
        policy.within_hourly,
        policy.within_daily,
        policy.within_weekly,
        policy.within_monthly,
        policy.within_yearly,
    ];
    let mut within_rules: Vec<WithinRule> = Period::ALL
        .into_iter()
        .zip(durations)
        .filter_map(|(period, d)| {
            let within = active(d)?;
            Some(WithinRule {
                period,
                within,
                cutoff: anchor.cutoff(within),
                last_key: NO_KEY,
            })
        })
        .collect();

    let oldest_position = ordered.len().saturating_sub(1);
    let mut plan = GroupPlan {
        key,
        keep: Vec::new(),
        remove: Vec::new(),
    };
    for (position, (&index, snapshot)) in members.iter().zip(&ordered).enumerate() {
        let is_oldest = position == oldest_position;
        let time = snapshot.time.timestamp().as_nanosecond();
        let mut reasons = Vec::new();

        // Tag lists keep without using up any count, but the snapshot still
        // goes through the count rules below (restic does the same).
        for list in &policy.tags {
            if crate::snapshot::has_tags(&snapshot.tags, list) {
                reasons.push(KeepReason::Tags(list.clone()));
            }
        }
        if let Some((d, _)) = within.filter(|&(_, cutoff)| time > cutoff) {
            reasons.push(KeepReason::Within(d));
        }
        // restic's "last" key is the snapshot's position, so it always
        // differs from the last kept one. The rule just keeps while it has
        // count left, and it can never give an "oldest" reason.
        if let Some(left) = last.as_mut().filter(|c| c.has_left()) {
            reasons.push(KeepReason::Last);
            left.consume();
        }
        // A rule that still has count left at the oldest snapshot keeps it
        // even in a period it already covered, so that a young repository
        // keeps its full history (restic 0.16+). That uses up a count too.
        for rule in count_rules.iter_mut().filter(|r| r.left.has_left()) {
            let key = rule.period.key(&snapshot.time);
            if key != rule.last_key || is_oldest {
                reasons.push(KeepReason::Periodic {
                    period: rule.period,
                    oldest: key == rule.last_key,
                });
                rule.last_key = key;
                rule.left.consume();
            }
        }
        for rule in within_rules.iter_mut().filter(|r| time > r.cutoff) {
            let key = rule.period.key(&snapshot.time);
            if key != rule.last_key || is_oldest {
                reasons.push(KeepReason::WithinPeriodic {
                    period: rule.period,
                    within: rule.within,
                    oldest: key == rule.last_key,
                });
                rule.last_key = key;
            }
        }

        let keep = !reasons.is_empty();
        let decision = Decision {
            index,
            snapshot: (*snapshot).clone(),
            keep,
            reasons,
        };
        if keep {
            plan.keep.push(decision);
        } else {
            plan.remove.push(decision);
        }
    }

    if plan.keep.is_empty() {
        return Err(RetentionError::WouldRemoveAll {
            snapshots: plan.remove.len(),
            group: plan.key,
        });
    }
    Ok(plan)
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SECOND;

/// Nanoseconds from the Unix epoch to 0001-01-01T00:00:00Z, Go's zero time.
/// restic starts its search for the latest snapshot from that time.
const GO_ZERO_TIME_NANOS: i128 = -62_135_596_800 * NANOS_PER_SECOND;

/// The latest snapshot's wall-clock time and offset, which the `within` rules
/// count back from.
struct Anchor {
    year: i64,
    month: i64,
    day: i64,
    nanos_of_day: i128,
    offset_seconds: i64,
}

impl Anchor {
    /// The newest snapshot that is older than `now`. If there is none, Go's
    /// zero time, 0001-01-01 UTC, is used, as restic does. Only a strictly
    /// newer time replaces the current choice, so among snapshots at the same
    /// instant the first in order is used (its offset matters for `cutoff`).
    fn latest(ordered: &[&SnapshotMeta], now: Timestamp) -> Anchor {
        let now = now.as_nanosecond();
        let mut best: Option<&Zoned> = None;
        let mut best_time = GO_ZERO_TIME_NANOS;
        for snapshot in ordered {
            let time = snapshot.time.timestamp().as_nanosecond();
            if time > best_time && time < now {
                best = Some(&snapshot.time);
                best_time = time;
            }
        }
        match best {
            Some(zoned) => {
                let dt = zoned.datetime();
                let seconds_of_day = i128::from(dt.hour()) * 3600
                    + i128::from(dt.minute()) * 60
                    + i128::from(dt.second());
                Anchor {
                    year: i64::from(dt.year()),
                    month: i64::from(dt.month()),
                    day: i64::from(dt.day()),
                    nanos_of_day: seconds_of_day * NANOS_PER_SECOND
                        + i128::from(dt.subsec_nanosecond()),
                    offset_seconds: i64::from(zoned.offset().seconds()),
                }
            }
            None => Anchor {
                year: 1,
                month: 1,
                day: 1,
                nanos_of_day: 0,
                offset_seconds: 0,
            },
        }
    }

    /// `latest.AddDate(-years, -months, -days).Add(-hours)` as Go computes
    /// it, in nanoseconds since the Unix epoch. Go moves the month first,
    /// carrying into the year. It then counts the day of the month from the
    /// 1st of the new month, so a day past the month's end rolls into the
    /// next month instead of being clamped (jiff and most libraries clamp).
    /// The sum is done in wide integers, so even `u32::MAX` years cannot
    /// overflow. restic's Go code would overflow for more than about 292
    /// years of hours; that case never comes up in practice.
    fn cutoff(&self, d: RetentionDuration) -> i128 {
        let months =
            self.year * 12 + (self.month - 1) - i64::from(d.years) * 12 - i64::from(d.months);
        let year = months.div_euclid(12);
        let month = months.rem_euclid(12) + 1;
        let days = days_from_civil(year, month, 1) + (self.day - 1) - i64::from(d.days);
        let local = i128::from(days) * NANOS_PER_DAY + self.nanos_of_day;
        local
            - i128::from(self.offset_seconds) * NANOS_PER_SECOND
            - i128::from(d.hours) * 3600 * NANOS_PER_SECOND
    }
}

/// Days from 1970-01-01 to the given date in the proleptic Gregorian calendar,
/// the calendar Go uses. `month` must be 1..=12. Any year works. The years are
/// counted from March so that the leap day falls at the end of a year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;
    use jiff::{Span, civil};
    use proptest::prelude::*;

    #[test]
    fn a_keep_tag_value_keeps_only_a_leading_empty_tag() {
        let list = |v: &str| crate::snapshot::tag_list(v);
        assert_eq!(list(""), [""]);
        assert_eq!(list(",a"), ["", "a"]);
        assert_eq!(list("a,b"), ["a", "b"]);
        assert_eq!(list("a,,b,"), ["a", "b"]);
    }

    /// `2021-03-04T05:06:07+01:00` (or `...Z`) as a Zoned in that fixed offset.
    fn at(s: &str) -> Zoned {
        let (civil, offset) = if let Some(civil) = s.strip_suffix('Z') {
            (civil, "+00:00")
        } else {
            s.split_at(s.len() - 6)
        };
        format!("{civil}{offset}[{offset}]")
            .parse()
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
    }

    fn ts(s: &str) -> Timestamp {
        at(s).timestamp()
    }

    fn snap(id: &str, time: &str) -> SnapshotMeta {
        SnapshotMeta {
            id: id.to_owned(),
            time: at(time),
            hostname: "h1".to_owned(),
            paths: vec!["/data".to_owned()],
            tags: Vec::new(),
        }
    }

    fn tagged(id: &str, time: &str, tags: &[&str]) -> SnapshotMeta {
        SnapshotMeta {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..snap(id, time)
        }
    }

    fn dur(s: &str) -> RetentionDuration {
        s.parse().unwrap()
    }

    fn far_future() -> Timestamp {
        ts("2100-01-01T00:00:00Z")
    }

    /// Runs a single-group policy and returns `(id, reasons as text)` of the
    /// kept snapshots, newest first.
    fn kept(
        snapshots: &[SnapshotMeta],
        policy: &KeepPolicy,
        now: Timestamp,
    ) -> Vec<(String, Vec<String>)> {
        let none = GroupBy::from_str("").unwrap();
        let plans = apply(snapshots, policy, none, now).unwrap();
        assert_eq!(plans.len(), 1);
        plans[0]
            .keep
            .iter()
            .map(|d| {
                let reasons = d.reasons.iter().map(ToString::to_string).collect();
                (d.snapshot.id.clone(), reasons)
            })
            .collect()
    }

    fn kept_ids(snapshots: &[SnapshotMeta], policy: &KeepPolicy, now: Timestamp) -> Vec<String> {
        kept(snapshots, policy, now)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn expect(rows: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        rows.iter()
            .map(|(id, reasons)| {
                (
                    id.to_string(),
                    reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect()
    }

    /// Several snapshots per day with a gap on the 3rd and 4th.
    fn days_with_gaps() -> Vec<SnapshotMeta> {
        vec![
            snap("a", "2021-03-01T09:00:00Z"),
            snap("b", "2021-03-01T18:00:00Z"),
            snap("c", "2021-03-02T08:00:00Z"),
            snap("d", "2021-03-02T12:00:00Z"),
            snap("e", "2021-03-02T23:59:59Z"),
            snap("f", "2021-03-05T10:00:00Z"),
            snap("g", "2021-03-06T10:00:00Z"),
        ]
    }

    #[test]
    fn apply_keeps_newest_per_day() {
        let policy = KeepPolicy {
            daily: Some(Count::Limited(3)),
            ..KeepPolicy::default()
        };
        let got = kept(&days_with_gaps(), &policy, far_future());
        // The empty 3rd and 4th use up nothing. The count is spent before the
        // oldest snapshot, so it is not kept.
        let want = expect(&[
            ("g", &["daily snapshot"]),
            ("f", &["daily snapshot"]),
            ("e", &["daily snapshot"]),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn apply_keeps_oldest_snapshot_while_count_remains() {
        let policy = KeepPolicy {
            daily: Some(Count::Limited(10)),
            ..KeepPolicy::default()
        };
        let got = kept(&days_with_gaps(), &policy, far_future());
        let want = expect(&[
            ("g", &["daily snapshot"]),
            ("f", &["daily snapshot"]),
            ("e", &["daily snapshot"]),
            ("b", &["daily snapshot"]),
            ("a", &["oldest daily snapshot"]),
        ]);
        assert_eq!(got, want);

        // If the oldest snapshot starts a new day anyway, it is an ordinary
        // daily snapshot.
        let without_a: Vec<_> = days_with_gaps().into_iter().skip(1).collect();
        let got = kept(&without_a, &policy, far_future());
        assert_eq!(
            got.last(),
            Some(&("b".to_owned(), vec!["daily snapshot".to_owned()]))
        );
    }

    #[test]
    fn apply_unlimited_keeps_one_per_period_and_the_oldest() {
        let policy = KeepPolicy {
            daily: Some(Count::Unlimited),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&days_with_gaps(), &policy, far_future()),
            ["g", "f", "e", "b", "a"]
        );
    }

    #[test]
    fn apply_keep_last_keeps_newest_snapshots() {
        let policy = KeepPolicy {
            last: Some(Count::Limited(2)),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&days_with_gaps(), &policy, far_future()),
            ["g", "f"]
        );

        // With count to spare the oldest is kept as a plain "last snapshot".
        let policy = KeepPolicy {
            last: Some(Count::Limited(100)),
            ..KeepPolicy::default()
        };
        let got = kept(&days_with_gaps(), &policy, far_future());
        assert_eq!(got.len(), 7);
        assert!(got.iter().all(|(_, r)| r == &["last snapshot"]));
    }

    #[test]
    fn apply_reasons_accumulate_across_rules() {
        let policy = KeepPolicy {
            last: Some(Count::Limited(1)),
            daily: Some(Count::Limited(2)),
            weekly: Some(Count::Limited(1)),
            monthly: Some(Count::Limited(5)),
            ..KeepPolicy::default()
        };
        let got = kept(&days_with_gaps(), &policy, far_future());
        let want = expect(&[
            (
                "g",
                &[
                    "last snapshot",
                    "daily snapshot",
                    "weekly snapshot",
                    "monthly snapshot",
                ],
            ),
            ("f", &["daily snapshot"]),
            ("a", &["oldest monthly snapshot"]),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn apply_uses_iso_weeks_across_new_year() {
        let snapshots = vec![
            snap("mon53", "2020-12-28T12:00:00Z"),
            snap("thu53", "2020-12-31T12:00:00Z"),
            snap("fri53", "2021-01-01T12:00:00Z"),
            snap("sun53", "2021-01-03T12:00:00Z"),
            snap("mon01", "2021-01-04T12:00:00Z"),
            snap("sun01", "2021-01-10T12:00:00Z"),
        ];
        let weekly = |n| KeepPolicy {
            weekly: Some(Count::Limited(n)),
            ..KeepPolicy::default()
        };
        // 2020-12-28 up to 2021-01-03 is all ISO week 2020-W53.
        assert_eq!(
            kept_ids(&snapshots, &weekly(2), far_future()),
            ["sun01", "sun53"]
        );
        let got = kept(&snapshots, &weekly(3), far_future());
        assert_eq!(
            got,
            expect(&[
                ("sun01", &["weekly snapshot"]),
                ("sun53", &["weekly snapshot"]),
                ("mon53", &["oldest weekly snapshot"]),
            ])
        );
        // Years, in contrast, are calendar years.
        let yearly = KeepPolicy {
            yearly: Some(Count::Limited(5)),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&snapshots, &yearly, far_future()),
            ["sun01", "thu53", "mon53"]
        );
    }

    #[test]
    fn apply_buckets_in_the_recorded_offset_across_dst() {
        // Central Europe leaves summer time on 2021-10-31: 03:00 +02:00
        // becomes 02:00 +01:00, so the 02h hour happens twice.
        let snapshots = vec![
            snap("s1", "2021-10-30T23:30:00+02:00"), // 21:30Z on the 30th
            snap("s2", "2021-10-31T00:30:00+02:00"), // 22:30Z, still the 30th in UTC
            snap("s3", "2021-10-31T02:30:00+02:00"), // 00:30Z
            snap("s4", "2021-10-31T02:10:00+01:00"), // 01:10Z, newest, same wall-clock hour as s3
        ];
        let hourly = KeepPolicy {
            hourly: Some(Count::Unlimited),
            ..KeepPolicy::default()
        };
        // In UTC s3 and s4 are in different hours. In their own offsets both
        // are in the local 02h hour.
        assert_eq!(
            kept_ids(&snapshots, &hourly, far_future()),
            ["s4", "s2", "s1"]
        );

        let daily = KeepPolicy {
            daily: Some(Count::Limited(2)),
            ..KeepPolicy::default()
        };
        // Locally s2 is on the 31st, like s3 and s4. Counting in UTC would
        // keep s2 as the 30th's snapshot instead of s1.
        assert_eq!(kept_ids(&snapshots, &daily, far_future()), ["s4", "s1"]);
    }

    #[test]
    fn apply_orders_by_instant_not_wall_clock() {
        let snapshots = vec![
            snap("tokyo", "2021-06-01T10:00:00+09:00"),   // 01:00Z
            snap("london", "2021-06-01T05:00:00+00:00"),  // 05:00Z, newer
            snap("newyork", "2021-05-31T23:30:00-05:00"), // 04:30Z on the 1st
        ];
        let policy = KeepPolicy {
            last: Some(Count::Limited(2)),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&snapshots, &policy, far_future()),
            ["london", "newyork"]
        );

        // Walking by instant, the days go 06-01, 05-31, 06-01. The third
        // snapshot's day differs from the last kept one, so restic keeps it
        // again.
        let daily = KeepPolicy {
            daily: Some(Count::Unlimited),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&snapshots, &daily, far_future()),
            ["london", "newyork", "tokyo"]
        );
    }

    #[test]
    fn apply_handles_unsorted_input_and_equal_times() {
        let snapshots = vec![
            snap("mid", "2021-01-02T00:00:00Z"),
            snap("twin1", "2021-01-03T00:00:00Z"),
            snap("old", "2021-01-01T00:00:00Z"),
            snap("twin2", "2021-01-03T00:00:00Z"),
        ];
        let policy = KeepPolicy {
            last: Some(Count::Limited(1)),
            ..KeepPolicy::default()
        };
        let plans = apply(&snapshots, &policy, GroupBy::default(), far_future()).unwrap();
        // Of two snapshots with the same time, the one given first counts as
        // newer.
        assert_eq!(plans[0].keep.len(), 1);
        assert_eq!(plans[0].keep[0].snapshot.id, "twin1");
        assert_eq!(plans[0].keep[0].index, 1);
        let removed: Vec<_> = plans[0]
            .remove
            .iter()
            .map(|d| (d.snapshot.id.as_str(), d.index))
            .collect();
        assert_eq!(removed, [("twin2", 3), ("mid", 0), ("old", 2)]);
        assert!(
            plans[0]
                .remove
                .iter()
                .all(|d| !d.keep && d.reasons.is_empty())
        );
    }

    #[test]
    fn within_cutoff_follows_go_adddate() {
        // (latest, duration, cutoff)
        let table = [
            ("2021-03-31T12:00:00Z", "1m", "2021-03-03T12:00:00Z"), // "Feb 31" rolls over
            ("2020-03-31T12:00:00Z", "1m", "2020-03-02T12:00:00Z"), // leap year
            ("2021-01-31T00:00:00Z", "1m", "2020-12-31T00:00:00Z"),
            ("2020-02-29T06:00:00Z", "1y", "2019-03-01T06:00:00Z"),
            ("2021-05-31T00:00:00Z", "3m", "2021-03-03T00:00:00Z"), // Feb 31 again
            ("2021-03-01T01:00:00Z", "1d2h", "2021-02-27T23:00:00Z"),
            ("2021-03-15T00:00:00Z", "1y14m", "2019-01-15T00:00:00Z"),
            (
                "2021-03-31T12:00:00+02:00",
                "1m",
                "2021-03-03T12:00:00+02:00",
            ),
            // The fixed offset is kept across the DST change on 2021-10-31.
            (
                "2021-11-01T12:00:00+01:00",
                "2d",
                "2021-10-30T12:00:00+01:00",
            ),
            (
                "2021-01-01T00:30:00+05:30",
                "1m1d1h",
                "2020-11-29T23:30:00+05:30",
            ),
        ];
        for (latest, d, want) in table {
            let s = snap("x", latest);
            let anchor = Anchor::latest(&[&s], far_future());
            let got = anchor.cutoff(dur(d));
            assert_eq!(got, ts(want).as_nanosecond(), "{latest} - {d}");
        }
    }

    #[test]
    fn apply_within_normalises_month_overflow_like_go() {
        let snapshots = vec![
            snap("mar1", "2021-03-01T00:00:00Z"),
            snap("cutoff", "2021-03-03T12:00:00Z"),
            snap("after", "2021-03-03T12:00:01Z"),
            snap("latest", "2021-03-31T12:00:00Z"),
        ];
        let policy = KeepPolicy {
            within: Some(dur("1m")),
            ..KeepPolicy::default()
        };
        // Clamping to 28 February would also keep "mar1". The cutoff itself is
        // not "newer than" the cutoff.
        let got = kept(&snapshots, &policy, far_future());
        assert_eq!(
            got,
            expect(&[("latest", &["within 1m"]), ("after", &["within 1m"])])
        );
    }

    #[test]
    fn apply_within_ignores_future_snapshots_for_latest() {
        let snapshots = vec![
            snap("old", "2021-06-01T00:00:00Z"),
            snap("early", "2021-06-08T11:00:00Z"),
            snap("late", "2021-06-08T13:00:00Z"),
            snap("latest", "2021-06-09T12:00:00Z"),
            snap("future", "2021-06-20T00:00:00Z"),
        ];
        let policy = KeepPolicy {
            within: Some(dur("1d")),
            ..KeepPolicy::default()
        };
        // latest = 06-09 12:00, so the cutoff is 06-08 12:00. The future
        // snapshot is newer than that and is kept as well.
        let now = ts("2021-06-10T00:00:00Z");
        assert_eq!(
            kept_ids(&snapshots, &policy, now),
            ["future", "latest", "late"]
        );

        // A snapshot taken exactly at `now` is not older than now, so it is
        // not "latest" either.
        let now = ts("2021-06-09T12:00:00Z");
        assert_eq!(
            kept_ids(&snapshots, &policy, now),
            ["future", "latest", "late", "early"]
        );
    }

    #[test]
    fn apply_within_counts_back_in_the_offset_of_the_first_latest_snapshot() {
        // Two snapshots at the same instant, written in different offsets. In
        // -05:00 it is 31 March, and minus 1m gives "31 February" = 3 March.
        // In UTC it is 1 April, and minus 1m gives 1 March.
        let east = snap("ny", "2021-03-31T23:30:00-05:00");
        let utc = snap("utc", "2021-04-01T04:30:00Z");
        let probe = snap("probe", "2021-03-02T00:00:00Z");
        let policy = KeepPolicy {
            within: Some(dur("1m")),
            ..KeepPolicy::default()
        };
        let ny_first = [east.clone(), utc.clone(), probe.clone()];
        assert_eq!(kept_ids(&ny_first, &policy, far_future()), ["ny", "utc"]);
        let utc_first = [utc, east, probe];
        assert_eq!(
            kept_ids(&utc_first, &policy, far_future()),
            ["utc", "ny", "probe"]
        );
    }

    #[test]
    fn apply_within_keeps_everything_when_all_snapshots_are_in_the_future() {
        let snapshots = vec![
            snap("a", "2021-06-01T00:00:00Z"),
            snap("b", "2022-06-01T00:00:00Z"),
        ];
        let policy = KeepPolicy {
            within: Some(dur("1d")),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept_ids(&snapshots, &policy, ts("2000-01-01T00:00:00Z")),
            ["b", "a"]
        );
    }

    #[test]
    fn apply_within_handles_huge_durations() {
        let huge = RetentionDuration {
            years: u32::MAX,
            months: u32::MAX,
            days: u32::MAX,
            hours: u32::MAX,
        };
        let policy = KeepPolicy {
            within: Some(huge),
            within_weekly: Some(huge),
            ..KeepPolicy::default()
        };
        let snapshots = vec![
            snap("old", "-009999-01-03T00:00:00Z"),
            snap("new", "9999-12-30T00:00:00Z"),
        ];
        let got = kept(&snapshots, &policy, far_future());
        let within = format!("within {huge}");
        let weekly = format!("weekly within {huge}");
        assert_eq!(
            got,
            [
                ("new".to_owned(), vec![within.clone(), weekly.clone()]),
                ("old".to_owned(), vec![within, weekly]),
            ]
        );
    }

    #[test]
    fn apply_within_daily_keeps_newest_per_day_in_range() {
        let mut snapshots = vec![
            snap("d5", "2021-06-05T10:00:00Z"),
            snap("d7", "2021-06-07T10:00:00Z"),
            snap("d8a", "2021-06-08T10:00:00Z"),
            snap("d8b", "2021-06-08T20:00:00Z"),
            snap("d9a", "2021-06-09T08:00:00Z"),
            snap("d9b", "2021-06-09T12:00:00Z"),
        ];
        let policy = |d| KeepPolicy {
            within_daily: Some(dur(d)),
            ..KeepPolicy::default()
        };
        // The cutoff is 06-07 12:00, so d7 is out of range.
        assert_eq!(
            kept_ids(&snapshots, &policy("2d"), far_future()),
            ["d9b", "d8b"]
        );
        let got = kept(&snapshots, &policy("30d"), far_future());
        assert_eq!(
            got,
            expect(&[
                ("d9b", &["daily within 30d"]),
                ("d8b", &["daily within 30d"]),
                ("d7", &["daily within 30d"]),
                ("d5", &["daily within 30d"]),
            ])
        );
        // An oldest snapshot that shares its day with a kept one is kept too,
        // but only if it is in range.
        snapshots.push(snap("d5early", "2021-06-05T08:00:00Z"));
        let got = kept(&snapshots, &policy("30d"), far_future());
        assert_eq!(
            got.last(),
            Some(&(
                "d5early".to_owned(),
                vec!["oldest daily within 30d".to_owned()]
            ))
        );
        assert!(!kept_ids(&snapshots, &policy("2d"), far_future()).contains(&"d5early".to_owned()));
    }

    #[test]
    fn apply_keep_tag_still_uses_up_counts() {
        let snapshots = vec![
            tagged("n4", "2021-06-06T00:00:00Z", &["signed"]),
            tagged("n3", "2021-06-07T00:00:00Z", &["signed", "release"]),
            snap("n2", "2021-06-08T00:00:00Z"),
            tagged("n1", "2021-06-09T00:00:00Z", &["release"]),
        ];
        let tags = |lists: &[&[&str]]| -> Vec<Vec<String>> {
            lists
                .iter()
                .map(|l| l.iter().map(|t| t.to_string()).collect())
                .collect()
        };
        let policy = KeepPolicy {
            daily: Some(Count::Limited(1)),
            tags: tags(&[&["release"]]),
            ..KeepPolicy::default()
        };
        // n1 is the daily snapshot too, so n2 is not kept.
        let got = kept(&snapshots, &policy, far_future());
        assert_eq!(
            got,
            expect(&[
                ("n1", &["has tags [release]", "daily snapshot"]),
                ("n3", &["has tags [release]"]),
            ])
        );
        // Tags in one list are AND'ed, lists are OR'ed.
        let and = KeepPolicy {
            tags: tags(&[&["release", "signed"]]),
            ..KeepPolicy::default()
        };
        assert_eq!(kept_ids(&snapshots, &and, far_future()), ["n3"]);
        let or = KeepPolicy {
            tags: tags(&[&["release"], &["signed"]]),
            ..KeepPolicy::default()
        };
        let got = kept(&snapshots, &or, far_future());
        assert_eq!(
            got,
            expect(&[
                ("n1", &["has tags [release]"]),
                ("n3", &["has tags [release]", "has tags [signed]"]),
                ("n4", &["has tags [signed]"]),
            ])
        );
        // An empty tag stands for "untagged". An empty list matches everything.
        let untagged = KeepPolicy {
            tags: tags(&[&[""]]),
            ..KeepPolicy::default()
        };
        assert_eq!(kept_ids(&snapshots, &untagged, far_future()), ["n2"]);
        let everything = KeepPolicy {
            tags: vec![Vec::new()],
            ..KeepPolicy::default()
        };
        assert_eq!(kept_ids(&snapshots, &everything, far_future()).len(), 4);
    }

    #[test]
    fn apply_refuses_empty_policy() {
        let snapshots = days_with_gaps();
        let empties = [
            KeepPolicy::default(),
            KeepPolicy {
                last: Some(Count::Limited(0)),
                daily: Some(Count::Limited(0)),
                within: Some(RetentionDuration::default()),
                within_yearly: Some(dur("0d")),
                ..KeepPolicy::default()
            },
        ];
        for policy in empties {
            assert!(policy.is_empty());
            let got = apply(&snapshots, &policy, GroupBy::default(), far_future());
            assert_eq!(got, Err(RetentionError::EmptyPolicy));
            // Also with no snapshots at all.
            assert_eq!(
                apply(&[], &policy, GroupBy::default(), far_future()),
                Err(RetentionError::EmptyPolicy)
            );
        }
        let tag_only = KeepPolicy {
            tags: vec![Vec::new()],
            ..KeepPolicy::default()
        };
        assert!(!tag_only.is_empty());
        assert!(
            apply(&[], &tag_only, GroupBy::default(), far_future())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn apply_refuses_to_remove_every_snapshot_of_a_group() {
        let mut snapshots = days_with_gaps();
        snapshots.push(tagged("other", "2021-03-01T00:00:00Z", &["keep"]));
        snapshots.last_mut().unwrap().hostname = "h0".to_owned();
        let policy = KeepPolicy {
            tags: vec![vec!["keep".to_owned()]],
            ..KeepPolicy::default()
        };
        // Group h0 keeps its snapshot, but group h1 would be emptied. That
        // refuses the whole run.
        let err = apply(&snapshots, &policy, GroupBy::default(), far_future()).unwrap_err();
        let group = GroupKey {
            hostname: Some("h1".to_owned()),
            paths: Some(vec!["/data".to_owned()]),
            tags: None,
        };
        assert_eq!(
            err,
            RetentionError::WouldRemoveAll {
                group,
                snapshots: 7
            }
        );
        assert!(
            err.to_string().starts_with(
                "refusing to delete last snapshot of snapshot group \"host h1, path [/data]\""
            ),
            "{err}"
        );
    }

    #[test]
    fn apply_groups_by_host_and_paths() {
        let mut snapshots = Vec::new();
        for (id, host, paths, tags, time) in [
            (
                "1",
                "h1",
                &["/b", "/a"][..],
                &["y", "x"][..],
                "2021-01-01T00:00:00Z",
            ),
            (
                "2",
                "h1",
                &["/a", "/b"][..],
                &["x", "y"][..],
                "2021-01-02T00:00:00Z",
            ),
            (
                "3",
                "h2",
                &["/a", "/b"][..],
                &[][..],
                "2021-01-03T00:00:00Z",
            ),
            ("4", "h1", &["/c"][..], &["x"][..], "2021-01-04T00:00:00Z"),
        ] {
            snapshots.push(SnapshotMeta {
                id: id.to_owned(),
                time: at(time),
                hostname: host.to_owned(),
                paths: paths.iter().map(|p| p.to_string()).collect(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
            });
        }
        let policy = KeepPolicy {
            last: Some(Count::Limited(1)),
            ..KeepPolicy::default()
        };
        let summary = |group_by: &str| -> Vec<(String, Vec<String>)> {
            let plans =
                apply(&snapshots, &policy, group_by.parse().unwrap(), far_future()).unwrap();
            plans
                .iter()
                .map(|p| {
                    let ids = p
                        .keep
                        .iter()
                        .chain(&p.remove)
                        .map(|d| d.snapshot.id.clone())
                        .collect();
                    (p.key.to_string(), ids)
                })
                .collect()
        };
        let strings = |rows: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            rows.iter()
                .map(|(k, ids)| (k.to_string(), ids.iter().map(|i| i.to_string()).collect()))
                .collect()
        };
        assert_eq!(
            summary("host,paths"),
            strings(&[
                ("host h1, path [/a /b]", &["2", "1"]),
                ("host h1, path [/c]", &["4"]),
                ("host h2, path [/a /b]", &["3"]),
            ])
        );
        assert_eq!(summary(""), strings(&[("", &["4", "3", "2", "1"])]));
        assert_eq!(
            summary("tags"),
            strings(&[
                ("no tags", &["3"]),
                ("tags [x]", &["4"]),
                ("tags [x y]", &["2", "1"])
            ])
        );
        let plans = apply(&snapshots, &policy, GroupBy::default(), far_future()).unwrap();
        assert_eq!(
            plans[0].key.paths.as_deref(),
            Some(&["/a".to_owned(), "/b".to_owned()][..])
        );
        assert_eq!(plans[0].key.tags, None);
    }

    #[test]
    fn reason_strings_match_restic() {
        let d = dur("30d");
        let cases = [
            (KeepReason::Last, "last snapshot"),
            (
                KeepReason::Periodic {
                    period: Period::Hourly,
                    oldest: false,
                },
                "hourly snapshot",
            ),
            (
                KeepReason::Periodic {
                    period: Period::Daily,
                    oldest: true,
                },
                "oldest daily snapshot",
            ),
            (KeepReason::Within(d), "within 30d"),
            (
                KeepReason::WithinPeriodic {
                    period: Period::Weekly,
                    within: d,
                    oldest: false,
                },
                "weekly within 30d",
            ),
            (
                KeepReason::WithinPeriodic {
                    period: Period::Yearly,
                    within: dur("1y2m"),
                    oldest: true,
                },
                "oldest yearly within 1y2m",
            ),
            (
                KeepReason::Tags(vec!["release".to_owned(), "signed".to_owned()]),
                "has tags [release, signed]",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn duration_parses_restic_syntax() {
        let full = RetentionDuration {
            years: 1,
            months: 2,
            days: 3,
            hours: 4,
        };
        assert_eq!(dur("1y2m3d4h"), full);
        assert_eq!(dur(" 1y2m3d4h "), full);
        assert_eq!(
            dur("14d"),
            RetentionDuration {
                days: 14,
                ..RetentionDuration::default()
            }
        );
        assert_eq!(
            dur("2m12h"),
            RetentionDuration {
                months: 2,
                hours: 12,
                ..RetentionDuration::default()
            }
        );
        assert!(dur("0d").is_zero());
        for s in ["1y2m3d4h", "14d", "2m12h", "1y", "5h", "4294967295y"] {
            assert_eq!(dur(s).to_string(), s);
        }
        assert_eq!(RetentionDuration::default().to_string(), "0h");
        assert_eq!(
            dur(&RetentionDuration::default().to_string()),
            RetentionDuration::default()
        );
    }

    #[test]
    fn duration_rejects_malformed_input() {
        let cases = [
            ("", ParseError::EmptyDuration),
            ("  ", ParseError::EmptyDuration),
            ("d", ParseError::ExpectedNumber("d".to_owned())),
            ("-1d", ParseError::ExpectedNumber("-1d".to_owned())),
            (
                "12",
                ParseError::MissingUnit {
                    input: "12".to_owned(),
                    number: 12,
                },
            ),
            (
                "3w",
                ParseError::InvalidUnit {
                    input: "3w".to_owned(),
                    unit: 'w',
                },
            ),
            (
                "1d1y",
                ParseError::UnitOutOfOrder {
                    input: "1d1y".to_owned(),
                    unit: 'y',
                },
            ),
            (
                "1d1d",
                ParseError::UnitOutOfOrder {
                    input: "1d1d".to_owned(),
                    unit: 'd',
                },
            ),
            (
                "4294967296h",
                ParseError::DurationTooLarge("4294967296h".to_owned()),
            ),
            ("1d 2h", ParseError::ExpectedNumber("1d 2h".to_owned())),
            ("1dé", ParseError::ExpectedNumber("1dé".to_owned())),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<RetentionDuration>(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn count_and_group_by_parse() {
        assert_eq!("7".parse(), Ok(Count::Limited(7)));
        assert_eq!("unlimited".parse(), Ok(Count::Unlimited));
        assert_eq!(
            "-1".parse::<Count>(),
            Err(ParseError::InvalidCount("-1".to_owned()))
        );
        assert_eq!(
            "x".parse::<Count>(),
            Err(ParseError::InvalidCount("x".to_owned()))
        );
        assert_eq!(
            "99999999999".parse::<Count>(),
            Err(ParseError::CountTooLarge("99999999999".to_owned()))
        );
        assert_eq!(Count::Unlimited.to_string(), "unlimited");

        assert_eq!(GroupBy::default().to_string(), "host,paths");
        assert_eq!("host,paths".parse(), Ok(GroupBy::default()));
        let all: GroupBy = "tags,hosts,path".parse().unwrap();
        assert_eq!(all.to_string(), "host,paths,tags");
        let none: GroupBy = "".parse().unwrap();
        assert_eq!(none.to_string(), "");
        assert_eq!(
            "host,label".parse::<GroupBy>(),
            Err(ParseError::UnknownGroupBy("label".to_owned()))
        );
    }

    #[test]
    fn plan_types_serialize() {
        fn assert_serialize<T: Serialize>() {}
        assert_serialize::<GroupPlan>();
        assert_serialize::<GroupKey>();
        assert_serialize::<Decision>();
    }

    /// restic's own ApplyPolicy test snapshots (internal/data), in restic's
    /// order, all in UTC.
    fn restic_fixture() -> Vec<SnapshotMeta> {
        const SEP_OCT: [&str; 10] = ["01", "02", "05", "06", "08", "09", "10", "11", "20", "22"];
        const AUG_NOV: [&str; 10] = ["08", "10", "12", "13", "13.1", "15", "18", "20", "21", "22"];
        let mut out = Vec::new();
        let mut push = |date: String, tags: &[&str]| {
            let (day, frac) = date
                .split_once('.')
                .map_or((date.as_str(), ""), |(d, f)| (d, f));
            let time = if frac.is_empty() {
                format!("{day}T10:20:30Z")
            } else {
                format!("{day}T10:20:30.{frac}Z")
            };
            let id = out.len().to_string();
            out.push(tagged(&id, &time, tags));
        };
        for year in [2014, 2015] {
            for day in SEP_OCT {
                push(format!("{year}-09-{day}"), &[]);
            }
            for day in AUG_NOV {
                push(format!("{year}-08-{day}"), &[]);
            }
            let october: &[&str] = if year == 2014 { &["foo"] } else { &[] };
            for day in SEP_OCT {
                push(format!("{year}-10-{day}"), october);
            }
            if year == 2015 {
                push("2015-10-22".to_owned(), &[]);
                push("2015-10-22".to_owned(), &["foo", "bar"]);
                push("2015-10-22".to_owned(), &["foo", "bar"]);
                push("2015-10-22".to_owned(), &["foo", "bar"]);
            }
            for (i, day) in AUG_NOV.into_iter().enumerate() {
                let tags: &[&str] = match (year, i) {
                    (2014, 0..=3) => &["foo"],
                    (2014, 4) => &["bar"],
                    (2014, 5) => &["foo", "bar"],
                    _ => &[],
                };
                push(format!("{year}-11-{day}"), tags);
            }
        }
        for time in [
            "2016-01-01T01:02:03Z",
            "2016-01-01T01:03:03Z",
            "2016-01-01T07:08:03Z",
            "2016-01-03T07:02:03Z",
            "2016-01-04T10:23:03Z",
            "2016-01-04T11:23:03Z",
            "2016-01-04T12:23:03Z",
            "2016-01-04T12:24:03Z",
            "2016-01-04T12:28:03Z",
            "2016-01-04T12:30:03Z",
            "2016-01-04T16:23:03Z",
            "2016-01-05T09:02:03Z",
            "2016-01-06T08:02:03Z",
            "2016-01-07T10:02:03Z",
            "2016-01-08T20:02:03Z",
            "2016-01-09T21:02:03Z",
            "2016-01-12T21:02:03Z",
            "2016-01-12T21:08:03Z",
            "2016-01-18T12:02:03Z",
        ] {
            let id = out.len().to_string();
            out.push(snap(&id, time));
        }
        out
    }

    /// `(UTC time, tags, reasons)` of the kept snapshots.
    fn kept_summary(policy: &KeepPolicy) -> Vec<(String, String, Vec<String>)> {
        let fixture = restic_fixture();
        let plans = apply(&fixture, policy, "".parse().unwrap(), far_future()).unwrap();
        plans[0]
            .keep
            .iter()
            .map(|d| {
                let utc = d.snapshot.time.timestamp().to_string();
                let reasons = d.reasons.iter().map(ToString::to_string).collect();
                (utc, d.snapshot.tags.join(","), reasons)
            })
            .collect()
    }

    #[test]
    fn apply_matches_restic_golden_yearly() {
        let policy = KeepPolicy {
            yearly: Some(Count::Limited(10)),
            ..KeepPolicy::default()
        };
        let got = kept_summary(&policy);
        let want = [
            ("2016-01-18T12:02:03Z", "", &["yearly snapshot"][..]),
            ("2015-11-22T10:20:30Z", "", &["yearly snapshot"][..]),
            ("2014-11-22T10:20:30Z", "", &["yearly snapshot"][..]),
            ("2014-08-08T10:20:30Z", "", &["oldest yearly snapshot"][..]),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(t, tags, r)| {
                (
                    t.to_string(),
                    tags.to_string(),
                    r.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn apply_matches_restic_golden_mixed_unlimited() {
        let policy = KeepPolicy {
            daily: Some(Count::Limited(3)),
            weekly: Some(Count::Limited(2)),
            monthly: Some(Count::Unlimited),
            yearly: Some(Count::Unlimited),
            ..KeepPolicy::default()
        };
        let got = kept_summary(&policy);
        let want: [(&str, &str, &[&str]); 12] = [
            (
                "2016-01-18T12:02:03Z",
                "",
                &[
                    "daily snapshot",
                    "weekly snapshot",
                    "monthly snapshot",
                    "yearly snapshot",
                ],
            ),
            (
                "2016-01-12T21:08:03Z",
                "",
                &["daily snapshot", "weekly snapshot"],
            ),
            ("2016-01-09T21:02:03Z", "", &["daily snapshot"]),
            (
                "2015-11-22T10:20:30Z",
                "",
                &["monthly snapshot", "yearly snapshot"],
            ),
            // The first of the five snapshots at this instant, untagged.
            ("2015-10-22T10:20:30Z", "", &["monthly snapshot"]),
            ("2015-09-22T10:20:30Z", "", &["monthly snapshot"]),
            ("2015-08-22T10:20:30Z", "", &["monthly snapshot"]),
            (
                "2014-11-22T10:20:30Z",
                "",
                &["monthly snapshot", "yearly snapshot"],
            ),
            ("2014-10-22T10:20:30Z", "foo", &["monthly snapshot"]),
            ("2014-09-22T10:20:30Z", "", &["monthly snapshot"]),
            ("2014-08-22T10:20:30Z", "", &["monthly snapshot"]),
            (
                "2014-08-08T10:20:30Z",
                "",
                &["oldest monthly snapshot", "oldest yearly snapshot"],
            ),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(t, tags, r)| {
                (
                    t.to_string(),
                    tags.to_string(),
                    r.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn apply_matches_restic_golden_within_hourly() {
        let policy = KeepPolicy {
            within_hourly: Some(dur("1y2m3d3h")),
            ..KeepPolicy::default()
        };
        let got = kept_summary(&policy);
        assert!(got.iter().all(|(_, _, r)| r == &["hourly within 1y2m3d3h"]));
        let times: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
        let mut want = vec![
            "2016-01-18T12:02:03Z",
            "2016-01-12T21:08:03Z",
            "2016-01-09T21:02:03Z",
            "2016-01-08T20:02:03Z",
            "2016-01-07T10:02:03Z",
            "2016-01-06T08:02:03Z",
            "2016-01-05T09:02:03Z",
            "2016-01-04T16:23:03Z",
            "2016-01-04T12:30:03Z",
            "2016-01-04T11:23:03Z",
            "2016-01-04T10:23:03Z",
            "2016-01-03T07:02:03Z",
            "2016-01-01T07:08:03Z",
            "2016-01-01T01:03:03Z",
        ];
        let days = |month: &str, days: &[&str]| -> Vec<String> {
            days.iter()
                .map(|d| match d.split_once('.') {
                    Some((d, f)) => format!("{month}-{d}T10:20:30.{f}Z"),
                    None => format!("{month}-{d}T10:20:30Z"),
                })
                .collect()
        };
        let older = [
            days(
                "2015-11",
                &["22", "21", "20", "18", "15", "13.1", "12", "10", "08"],
            ),
            days(
                "2015-10",
                &["22", "20", "11", "10", "09", "08", "06", "05", "02", "01"],
            ),
            days(
                "2015-09",
                &["22", "20", "11", "10", "09", "08", "06", "05", "02", "01"],
            ),
            days(
                "2015-08",
                &["22", "21", "20", "18", "15", "13.1", "12", "10", "08"],
            ),
            // The cutoff is 2014-11-15 09:02:03, so the 15th is the last one.
            days("2014-11", &["22", "21", "20", "18", "15"]),
        ]
        .concat();
        want.extend(older.iter().map(String::as_str));
        assert_eq!(times, want);
    }

    // ----- property test against an independent reference implementation -----

    const TAGS: [&str; 3] = ["a", "b", ""];

    #[derive(Debug, Clone)]
    struct Case {
        snapshots: Vec<SnapshotMeta>,
        policy: KeepPolicy,
        group_by: GroupBy,
        now: Timestamp,
    }

    fn base() -> Timestamp {
        ts("2019-06-01T00:00:00Z")
    }

    fn arb_snapshot() -> impl Strategy<Value = SnapshotMeta> {
        let four_years = 4 * 365 * 86_400;
        let seconds = prop_oneof![
            0i64..four_years,
            // Whole hours, so that equal times and shared periods are common.
            (0i64..four_years / 3600).prop_map(|h| h * 3600),
        ];
        let offset = prop::sample::select(vec![
            -5 * 3600,
            0,
            3600,
            2 * 3600,
            5 * 3600 + 1800,
            9 * 3600,
        ]);
        let paths = prop::sample::select(vec![vec!["/a"], vec!["/a", "/b"], vec!["/b", "/a"]]);
        let tags = prop::sample::subsequence(vec!["b", "a"], 0..=2);
        (seconds, offset, 0u8..2, paths, tags).prop_map(|(secs, offset, host, paths, tags)| {
            let instant = base().checked_add(Span::new().seconds(secs)).unwrap();
            let tz = TimeZone::fixed(jiff::tz::Offset::from_seconds(offset).unwrap());
            SnapshotMeta {
                id: String::new(),
                time: instant.to_zoned(tz),
                hostname: format!("h{host}"),
                paths: paths.into_iter().map(String::from).collect(),
                tags: tags.into_iter().map(String::from).collect(),
            }
        })
    }

    fn arb_count() -> impl Strategy<Value = Option<Count>> {
        prop_oneof![
            4 => Just(None),
            3 => (0u32..8).prop_map(|n| Some(Count::Limited(n))),
            1 => Just(Some(Count::Unlimited)),
        ]
    }

    fn arb_duration() -> impl Strategy<Value = Option<RetentionDuration>> {
        // Mostly short durations, so that `within` rules leave something to
        // remove in a four-year history.
        let part = |max: u32| prop_oneof![2 => Just(0u32), 1 => 0..max];
        let some =
            (part(2), part(4), part(20), part(48)).prop_map(|(years, months, days, hours)| {
                Some(RetentionDuration {
                    years,
                    months,
                    days,
                    hours,
                })
            });
        prop_oneof![5 => Just(None), 1 => some]
    }

    fn build_policy(
        c: [Option<Count>; 6],
        d: [Option<RetentionDuration>; 6],
        tags: Vec<Vec<&str>>,
    ) -> KeepPolicy {
        KeepPolicy {
            last: c[0],
            hourly: c[1],
            daily: c[2],
            weekly: c[3],
            monthly: c[4],
            yearly: c[5],
            within: d[0],
            within_hourly: d[1],
            within_daily: d[2],
            within_weekly: d[3],
            within_monthly: d[4],
            within_yearly: d[5],
            tags: tags
                .into_iter()
                .map(|l| l.into_iter().map(String::from).collect())
                .collect(),
        }
    }

    fn arb_policy() -> impl Strategy<Value = KeepPolicy> {
        let tag_list = prop::collection::vec(prop::sample::select(TAGS.to_vec()), 0..3);
        let tag_lists = prop::collection::vec(tag_list, 1..3);
        let tags = prop_oneof![3 => Just(Vec::new()), 1 => tag_lists.clone()];
        let mixed = (
            prop::array::uniform6(arb_count()),
            prop::array::uniform6(arb_duration()),
            tags,
        )
            .prop_map(|(c, d, tags)| build_policy(c, d, tags));
        // Tag lists alone often keep nothing in some group.
        let tags_only = tag_lists.prop_map(|tags| build_policy([None; 6], [None; 6], tags));
        // Rules that are all switched off: the policy is empty.
        let off_count = prop_oneof![Just(None), Just(Some(Count::Limited(0)))];
        let off_duration = prop_oneof![Just(None), Just(Some(RetentionDuration::default()))];
        let off = (
            prop::array::uniform6(off_count),
            prop::array::uniform6(off_duration),
        )
            .prop_map(|(c, d)| build_policy(c, d, Vec::new()));
        prop_oneof![8 => mixed, 2 => tags_only, 1 => off]
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        let snapshots = prop::collection::vec(arb_snapshot(), 0..300);
        let group_by = (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(host, paths, tags)| GroupBy { host, paths, tags });
        let now = (0i64..5 * 365 * 86_400)
            .prop_map(|s| base().checked_add(Span::new().seconds(s)).unwrap());
        (snapshots, arb_policy(), group_by, now).prop_map(
            |(mut snapshots, policy, group_by, now)| {
                for (i, s) in snapshots.iter_mut().enumerate() {
                    s.id = format!("s{i}");
                }
                Case {
                    snapshots,
                    policy,
                    group_by,
                    now,
                }
            },
        )
    }

    /// The same rules, written from the prose in the module docs in a
    /// different way: rules work on runs of equal periods instead of
    /// streaming, periods come from strftime, and dates use jiff's calendar
    /// arithmetic.
    mod reference {
        use super::*;

        /// Input index and reasons of each kept snapshot of a group.
        pub type Kept = Vec<(usize, Vec<KeepReason>)>;

        pub fn run(case: &Case) -> Result<Vec<(GroupKey, Kept)>, RetentionError> {
            let p = &case.policy;
            let counts_off = [p.last, p.hourly, p.daily, p.weekly, p.monthly, p.yearly]
                .iter()
                .all(|c| matches!(c, None | Some(Count::Limited(0))));
            let durations_off = [
                p.within,
                p.within_hourly,
                p.within_daily,
                p.within_weekly,
                p.within_monthly,
                p.within_yearly,
            ]
            .iter()
            .all(|d| d.is_none_or(|d| d.years + d.months + d.days + d.hours == 0));
            if p.tags.is_empty() && counts_off && durations_off {
                return Err(RetentionError::EmptyPolicy);
            }

            let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
            for (i, s) in case.snapshots.iter().enumerate() {
                let sorted = |v: &Vec<String>| {
                    let mut v = v.clone();
                    v.sort();
                    v
                };
                let key = GroupKey {
                    hostname: case.group_by.host.then(|| s.hostname.clone()),
                    paths: case.group_by.paths.then(|| sorted(&s.paths)),
                    tags: case.group_by.tags.then(|| sorted(&s.tags)),
                };
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            }
            groups.sort_by(|a, b| a.0.cmp(&b.0));

            let mut out = Vec::new();
            for (key, mut members) in groups {
                // Newest first, equal times in input order.
                members
                    .sort_by_key(|&i| (std::cmp::Reverse(case.snapshots[i].time.timestamp()), i));
                let kept = group(case, &members);
                if kept.is_empty() {
                    return Err(RetentionError::WouldRemoveAll {
                        group: key,
                        snapshots: members.len(),
                    });
                }
                out.push((key, kept));
            }
            Ok(out)
        }

        fn matches_tags(tags: &[String], list: &[String]) -> bool {
            if tags.is_empty() {
                // Nothing is present, so only an empty list or a leading
                // empty tag (meaning "untagged") can match.
                list.first().is_none_or(String::is_empty)
            } else {
                list.iter().all(|t| tags.contains(t))
            }
        }

        fn period_label(period: Period, z: &Zoned) -> String {
            let format = match period {
                Period::Hourly => "%Y-%m-%d %H",
                Period::Daily => "%Y-%m-%d",
                Period::Weekly => "%G-W%V",
                Period::Monthly => "%Y-%m",
                Period::Yearly => "%Y",
            };
            z.strftime(format).to_string()
        }

        fn cutoff(latest: &Zoned, d: RetentionDuration) -> Timestamp {
            let total = i64::from(latest.year()) * 12 + i64::from(latest.month())
                - 1
                - i64::from(d.years) * 12
                - i64::from(d.months);
            let first = civil::Date::new(
                total.div_euclid(12) as i16,
                (total.rem_euclid(12) + 1) as i8,
                1,
            )
            .unwrap();
            let days = i64::from(latest.day()) - 1 - i64::from(d.days);
            let date = first.checked_add(Span::new().days(days)).unwrap();
            let zoned = date
                .to_datetime(latest.time())
                .to_zoned(TimeZone::fixed(latest.offset()))
                .unwrap();
            zoned
                .timestamp()
                .checked_sub(Span::new().hours(d.hours))
                .unwrap()
        }

        /// Positions of the first snapshot of each run of equal periods.
        fn run_starts(labels: &[String]) -> Vec<usize> {
            (0..labels.len())
                .filter(|&i| i == 0 || labels[i] != labels[i - 1])
                .collect()
        }

        fn group(case: &Case, members: &[usize]) -> Kept {
            let p = &case.policy;
            let snaps: Vec<&SnapshotMeta> = members.iter().map(|&i| &case.snapshots[i]).collect();
            let n = snaps.len();
            let oldest = n - 1;
            let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); n];

            let candidates: Vec<usize> = (0..n)
                .filter(|&i| {
                    let t = snaps[i].time.timestamp();
                    t < case.now && t > ts("0001-01-01T00:00:00Z")
                })
                .collect();
            let latest_time = candidates.iter().map(|&i| snaps[i].time.timestamp()).max();
            let latest = match latest_time {
                Some(t) => candidates
                    .iter()
                    .map(|&i| snaps[i].time.clone())
                    .find(|z| z.timestamp() == t)
                    .unwrap(),
                None => at("0001-01-01T00:00:00Z"),
            };
            let is_on = |d: Option<RetentionDuration>| d.filter(|d| !d.is_zero());

            for (i, s) in snaps.iter().enumerate() {
                for list in &p.tags {
                    if matches_tags(&s.tags, list) {
                        reasons[i].push(KeepReason::Tags(list.clone()));
                    }
                }
            }
            if let Some(d) = is_on(p.within) {
                let cut = cutoff(&latest, d);
                for (i, s) in snaps.iter().enumerate() {
                    if s.time.timestamp() > cut {
                        reasons[i].push(KeepReason::Within(d));
                    }
                }
            }
            if let Some(count) = p.last {
                let limit = match count {
                    Count::Limited(n) => n as usize,
                    Count::Unlimited => usize::MAX,
                };
                for r in reasons.iter_mut().take(limit) {
                    r.push(KeepReason::Last);
                }
            }
            let counts = [p.hourly, p.daily, p.weekly, p.monthly, p.yearly];
            for (period, count) in Period::ALL.into_iter().zip(counts) {
                let Some(count) = count else { continue };
                let limit = match count {
                    Count::Limited(n) => n as usize,
                    Count::Unlimited => usize::MAX,
                };
                let labels: Vec<String> = snaps
                    .iter()
                    .map(|s| period_label(period, &s.time))
                    .collect();
                let starts = run_starts(&labels);
                for &i in starts.iter().take(limit) {
                    reasons[i].push(KeepReason::Periodic {
                        period,
                        oldest: false,
                    });
                }
                // The oldest is kept on top if it is not a run start and the
                // rule kept fewer runs than it may.
                if !starts.contains(&oldest) && starts.len() < limit {
                    reasons[oldest].push(KeepReason::Periodic {
                        period,
                        oldest: true,
                    });
                }
            }
            let durations = [
                p.within_hourly,
                p.within_daily,
                p.within_weekly,
                p.within_monthly,
                p.within_yearly,
            ];
            for (period, d) in Period::ALL.into_iter().zip(durations) {
                let Some(d) = is_on(d) else { continue };
                let cut = cutoff(&latest, d);
                let in_range = snaps
                    .iter()
                    .take_while(|s| s.time.timestamp() > cut)
                    .count();
                let labels: Vec<String> = snaps[..in_range]
                    .iter()
                    .map(|s| period_label(period, &s.time))
                    .collect();
                let starts = run_starts(&labels);
                for &i in &starts {
                    reasons[i].push(KeepReason::WithinPeriodic {
                        period,
                        within: d,
                        oldest: false,
                    });
                }
                if in_range == n && !starts.contains(&oldest) {
                    reasons[oldest].push(KeepReason::WithinPeriodic {
                        period,
                        within: d,
                        oldest: true,
                    });
                }
            }

            members
                .iter()
                .zip(reasons)
                .filter(|(_, r)| !r.is_empty())
                .map(|(&i, r)| (i, r))
                .collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn apply_matches_reference_and_partitions_input(case in arb_case()) {
            let got = apply(&case.snapshots, &case.policy, case.group_by, case.now);
            let want = reference::run(&case);
            match (got, want) {
                (Err(got), Err(want)) => prop_assert_eq!(got, want),
                (Ok(plans), Ok(want)) => {
                    let mut seen = vec![0u32; case.snapshots.len()];
                    let mut got_groups = Vec::new();
                    for plan in &plans {
                        prop_assert!(!plan.keep.is_empty());
                        for d in plan.keep.iter().chain(&plan.remove) {
                            seen[d.index] += 1;
                            prop_assert_eq!(&d.snapshot, &case.snapshots[d.index]);
                            prop_assert_eq!(d.keep, !d.reasons.is_empty());
                        }
                        prop_assert!(plan.keep.iter().all(|d| d.keep));
                        prop_assert!(plan.remove.iter().all(|d| !d.keep));
                        for list in [&plan.keep, &plan.remove] {
                            prop_assert!(list.windows(2).all(|w| w[0].snapshot.time.timestamp() >= w[1].snapshot.time.timestamp()));
                        }
                        let kept: Vec<(usize, Vec<KeepReason>)> =
                            plan.keep.iter().map(|d| (d.index, d.reasons.clone())).collect();
                        got_groups.push((plan.key.clone(), kept));
                    }
                    // keep ∪ remove is the whole input, and they do not overlap.
                    prop_assert!(seen.iter().all(|&n| n == 1));
                    prop_assert_eq!(got_groups, want);
                }
                (got, want) => prop_assert!(false, "apply gave {:?}, reference gave {:?}", got, want),
            }
        }
    }
}
