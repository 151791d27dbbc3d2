//! Store limits: the server-wide channel count, the limits every channel gets, and per-channel
//! overrides (literal names or wildcards) that inherit from the most specific wider entry, as in
//! the reference (`stores/limits.go`). Limits are fixed when a channel is created.

use std::time::Duration;

/// The limits one channel runs with. Zero means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    pub max_subs: i64,
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub max_age: Duration,
    pub max_inactivity: Duration,
}

impl ChannelLimits {
    /// With max_age: messages stored at or before this time (ns since the epoch) have expired.
    pub fn age_cutoff(&self, now_ns: i64) -> Option<i64> {
        if self.max_age.is_zero() {
            return None;
        }
        let age = i64::try_from(self.max_age.as_nanos()).unwrap_or(i64::MAX);
        Some(now_ns.saturating_sub(age))
    }
}

impl Default for ChannelLimits {
    /// The reference's `DefaultStoreLimits`.
    fn default() -> Self {
        ChannelLimits {
            max_subs: 1000,
            max_msgs: 1_000_000,
            max_bytes: 1_024_000_000,
            max_age: Duration::ZERO,
            max_inactivity: Duration::ZERO,
        }
    }
}

/// One limit of a per-channel entry as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override<T> {
    /// Not written: take the parent's value.
    #[default]
    Inherit,
    /// Written as 0: unlimited for this one limit.
    Unlimited,
    Value(T),
}

impl<T: Copy> Override<T> {
    fn resolve(self, parent: T, unlimited: T) -> T {
        match self {
            Override::Inherit => parent,
            Override::Unlimited => unlimited,
            Override::Value(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelOverride {
    pub max_subs: Override<i64>,
    pub max_msgs: Override<i64>,
    pub max_bytes: Override<i64>,
    pub max_age: Override<Duration>,
    pub max_inactivity: Override<Duration>,
}

impl ChannelOverride {
    fn apply(&self, parent: &ChannelLimits) -> ChannelLimits {
        ChannelLimits {
            max_subs: self.max_subs.resolve(parent.max_subs, 0),
            max_msgs: self.max_msgs.resolve(parent.max_msgs, 0),
            max_bytes: self.max_bytes.resolve(parent.max_bytes, 0),
            max_age: self.max_age.resolve(parent.max_age, Duration::ZERO),
            max_inactivity: self
                .max_inactivity
                .resolve(parent.max_inactivity, Duration::ZERO),
        }
    }
}

/// Limits as configured (before inheritance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_channels: i64,
    pub global: ChannelLimits,
    pub per_channel: Vec<(String, ChannelOverride)>,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_channels: 100,
            global: ChannelLimits::default(),
            per_channel: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("max {0} limit cannot be negative ({1})")]
    Negative(&'static str, i64),
    #[error("invalid channel name {0:?}")]
    InvalidChannelName(String),
    #[error("too many channels defined ({0}). The max channels limit is set to {1}")]
    TooManyChannels(usize, i64),
}

/// One per-channel entry after inheritance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEntry {
    pub name: String,
    pub limits: ChannelLimits,
    /// The entry this one inherits from; `None` for the global limits.
    pub parent: Option<usize>,
    /// How many entries up to the global limits.
    pub depth: usize,
}

/// Limits after validation and inheritance: what channels are created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLimits {
    pub max_channels: i64,
    pub global: ChannelLimits,
    /// Sorted by name; a parent always comes before its children.
    pub entries: Vec<ResolvedEntry>,
}

impl StoreLimits {
    /// Validates the limits and applies inheritance.
    pub fn build(&self) -> Result<ResolvedLimits, LimitsError> {
        let g = &self.global;
        for (name, value) in [
            ("channels", self.max_channels),
            ("subscriptions", g.max_subs),
            ("messages", g.max_msgs),
            ("bytes", g.max_bytes),
        ] {
            if value < 0 {
                return Err(LimitsError::Negative(name, value));
            }
        }
        let mut literals = 0usize;
        for (name, _) in &self.per_channel {
            if !is_valid_channel_pattern(name) {
                return Err(LimitsError::InvalidChannelName(name.clone()));
            }
            if is_literal(name) {
                literals += 1;
                if self.max_channels > 0 && literals as i64 > self.max_channels {
                    return Err(LimitsError::TooManyChannels(literals, self.max_channels));
                }
            }
        }
        let mut sorted = self.per_channel.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|later, earlier| later.0 == earlier.0);
        // An entry's parent is the most specific other entry covering it; resolving in order of
        // fewer covering entries first guarantees parents are resolved before children.
        let names: Vec<&str> = sorted.iter().map(|(n, _)| n.as_str()).collect();
        let mut order: Vec<usize> = (0..sorted.len()).collect();
        let cover_counts: Vec<usize> = names
            .iter()
            .map(|n| names.iter().filter(|p| *p != n && covers(p, n)).count())
            .collect();
        order.sort_by_key(|i| cover_counts[*i]);
        let mut resolved: Vec<Option<ResolvedEntry>> = vec![None; sorted.len()];
        for i in order {
            let parent = most_specific(
                names
                    .iter()
                    .enumerate()
                    .filter(|(j, p)| *j != i && covers(p, names[i]))
                    .map(|(j, p)| (j, *p)),
            );
            let (parent_limits, depth) = match parent.and_then(|p| resolved[p].as_ref()) {
                Some(p) => (p.limits, p.depth + 1),
                None => (self.global, 1),
            };
            resolved[i] = Some(ResolvedEntry {
                name: names[i].to_string(),
                limits: sorted[i].1.apply(&parent_limits),
                parent,
                depth,
            });
        }
        Ok(ResolvedLimits {
            max_channels: self.max_channels,
            global: self.global,
            entries: resolved.into_iter().flatten().collect(),
        })
    }
}

impl ResolvedLimits {
    /// The limits a new channel named `channel` gets: those of its most specific matching
    /// entry, else the global ones.
    pub fn for_channel(&self, channel: &str) -> ChannelLimits {
        let best = most_specific(
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| covers(&e.name, channel))
                .map(|(i, e)| (i, e.name.as_str())),
        );
        match best {
            Some(i) => self.entries[i].limits,
            None => self.global,
        }
    }
}

pub fn is_literal(name: &str) -> bool {
    name.split('.').all(|t| t != "*" && t != ">")
}

/// A channel name (or, for limits, a pattern): non-empty dot-separated tokens, no spaces;
/// `*` and `>` only as whole tokens and `>` only last.
pub fn is_valid_channel_pattern(name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let tokens: Vec<&str> = name.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(char::is_whitespace)
            && (*t == "*" || *t == ">" && i == tokens.len() - 1 || !t.contains(['*', '>']))
    })
}

/// Whether `pattern` matches every channel `name` can stand for (wildcards in `name` are
/// taken as tokens).
pub fn covers(pattern: &str, name: &str) -> bool {
    let mut p = pattern.split('.');
    let mut n = name.split('.');
    loop {
        match (p.next(), n.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Orders patterns by how narrow they are: at the first token where they differ, a literal
/// beats `*`, which beats `>`; a longer pattern beats its prefix.
fn specificity_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn rank(t: Option<&str>) -> u8 {
        match t {
            None => 0,
            Some(">") => 1,
            Some("*") => 2,
            Some(_) => 3,
        }
    }
    let mut ta = a.split('.');
    let mut tb = b.split('.');
    loop {
        let (x, y) = (ta.next(), tb.next());
        if x.is_none() && y.is_none() {
            return std::cmp::Ordering::Equal;
        }
        let ord = rank(x).cmp(&rank(y));
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
}

fn most_specific<'a>(candidates: impl Iterator<Item = (usize, &'a str)>) -> Option<usize> {
    candidates
        .max_by(|a, b| specificity_cmp(a.1, b.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, o: ChannelOverride) -> (String, ChannelOverride) {
        (name.to_string(), o)
    }

    #[test]
    fn wildcard_inheritance_and_most_specific_match() {
        let limits = StoreLimits {
            max_channels: 10,
            global: ChannelLimits {
                max_msgs: 100,
                ..Default::default()
            },
            per_channel: vec![
                entry(
                    "foo.>",
                    ChannelOverride {
                        max_msgs: Override::Value(50),
                        max_bytes: Override::Unlimited,
                        ..Default::default()
                    },
                ),
                entry(
                    "foo.bar.>",
                    ChannelOverride {
                        max_subs: Override::Value(3),
                        ..Default::default()
                    },
                ),
                entry(
                    "foo.bar.baz",
                    ChannelOverride {
                        max_msgs: Override::Unlimited,
                        ..Default::default()
                    },
                ),
            ],
        };
        let r = limits.build().unwrap();
        assert_eq!(
            r.for_channel("foo").max_msgs,
            100,
            "foo.> does not match foo"
        );
        assert_eq!(r.for_channel("foo.x").max_msgs, 50);
        assert_eq!(r.for_channel("foo.x").max_bytes, 0);
        let bar = r.for_channel("foo.bar.q");
        assert_eq!((bar.max_msgs, bar.max_subs, bar.max_bytes), (50, 3, 0));
        let baz = r.for_channel("foo.bar.baz");
        assert_eq!((baz.max_msgs, baz.max_subs), (0, 3));
        assert_eq!(r.entries.iter().map(|e| e.depth).max(), Some(3));
    }

    #[test]
    fn validation_errors_have_the_reference_texts() {
        let mut l = StoreLimits::default();
        l.global.max_msgs = -1;
        assert_eq!(
            l.build().unwrap_err().to_string(),
            "max messages limit cannot be negative (-1)"
        );
        let mut l = StoreLimits {
            max_channels: 1,
            ..Default::default()
        };
        l.per_channel = vec![
            entry("a", Default::default()),
            entry("b.>", Default::default()),
            entry("c", Default::default()),
        ];
        assert_eq!(
            l.build().unwrap_err().to_string(),
            "too many channels defined (2). The max channels limit is set to 1"
        );
        l.per_channel = vec![entry("a.>.b", Default::default())];
        assert!(matches!(l.build(), Err(LimitsError::InvalidChannelName(_))));
    }

    #[test]
    fn pattern_rules() {
        assert!(covers("foo.*", "foo.bar"));
        assert!(!covers("foo.*", "foo.bar.baz"));
        assert!(covers("foo.>", "foo.bar.>"));
        assert!(!covers("foo.bar", "foo.*"));
        assert!(is_valid_channel_pattern("foo.*.>"));
        assert!(!is_valid_channel_pattern("foo..bar"));
        assert!(!is_valid_channel_pattern("foo.b*r"));
    }
}
