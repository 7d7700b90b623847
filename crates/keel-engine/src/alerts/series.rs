//! The metrics as the alert evaluator sees them: the registry's text exposition parsed into
//! series (a sample name and its labels) and their values, and a bounded history of such
//! snapshots for functions over a window.
//!
//! Reading the exposition (rather than the metric types) is what lets a rule name any keel
//! metric, including ones registered later, by the name `GET /metrics` shows.

use std::collections::{HashMap, HashSet, VecDeque};

/// A series' labels, sorted by name.
pub(crate) type Labels = Vec<(String, String)>;

/// The values of the series of the sample names that rules read, at one time.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// When it was taken, in milliseconds (the evaluator's clock).
    pub(crate) at_ms: i64,
    /// Sample name → labels → value.
    pub(crate) samples: HashMap<String, HashMap<Labels, f64>>,
}

impl Snapshot {
    /// Parses an OpenMetrics or Prometheus text exposition, keeping only samples named in
    /// `wanted`. Lines it cannot read are skipped: the text is keel's own.
    pub(crate) fn parse(text: &str, wanted: &HashSet<String>, at_ms: i64) -> Snapshot {
        let mut samples: HashMap<String, HashMap<Labels, f64>> = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            if !wanted.contains(name) {
                continue;
            }
            if let Some((labels, value)) = parse_rest(&line[name_end..]) {
                samples
                    .entry(name.to_owned())
                    .or_default()
                    .insert(labels, value);
            }
        }
        Snapshot { at_ms, samples }
    }

    /// The series of `name` whose labels include every matcher.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &str,
        matchers: &'a [(String, String)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(labels, _)| matches(labels, matchers))
            .map(|(labels, value)| (labels, *value))
    }

    /// The value of one series, if it is there.
    pub(crate) fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.samples.get(name)?.get(labels).copied()
    }
}

/// Whether `labels` has every matcher's label with its value.
pub(crate) fn matches(labels: &Labels, matchers: &[(String, String)]) -> bool {
    matchers
        .iter()
        .all(|(name, value)| labels.iter().any(|(n, v)| n == name && v == value))
}

/// Reads `{a="x",b="y"} 12.5` (labels optional, a timestamp after the value ignored).
fn parse_rest(rest: &str) -> Option<(Labels, f64)> {
    let (mut labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (Vec::new(), rest),
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    labels.sort();
    Some((labels, value))
}

/// Reads labels up to the closing brace; returns them and the text after it.
fn parse_labels(mut text: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((name.to_owned(), value));
        text = &rest[end + 1..];
    }
}

/// Snapshots over time, oldest first, bounded by [`crate::limits::ALERT_SNAPSHOTS_MAX`].
#[derive(Debug, Default)]
pub(crate) struct History {
    snapshots: VecDeque<Snapshot>,
}

impl History {
    /// Adds the newest snapshot and forgets those older than `keep_ms` before it. When the
    /// history is at its bound, the second newest is replaced instead, so the spacing grows
    /// rather than the memory.
    pub(crate) fn push(&mut self, snapshot: Snapshot, keep_ms: i64) {
        let oldest_kept = snapshot.at_ms.saturating_sub(keep_ms);
        // One snapshot at or before the window's start is kept, so a window is fully covered.
        while self.snapshots.len() >= 2 && self.snapshots[1].at_ms <= oldest_kept {
            self.snapshots.pop_front();
        }
        if self.snapshots.len() >= crate::limits::ALERT_SNAPSHOTS_MAX {
            self.snapshots.pop_back();
        }
        self.snapshots.push_back(snapshot);
    }

    /// The newest snapshot.
    pub(crate) fn latest(&self) -> Option<&Snapshot> {
        self.snapshots.back()
    }

    /// The snapshots that cover the last `window_ms` (one at or before its start when there
    /// is one), oldest first.
    pub(crate) fn window(&self, window_ms: i64) -> impl Iterator<Item = &Snapshot> {
        let now = self.latest().map_or(0, |latest| latest.at_ms);
        let start = now.saturating_sub(window_ms);
        let first = self
            .snapshots
            .iter()
            .rposition(|snapshot| snapshot.at_ms <= start)
            .unwrap_or(0);
        self.snapshots.range(first..)
    }
}

/// A counter's increase over `window_ms` and the span it was seen over, in milliseconds:
/// resets (a value lower than the one before) count from zero, as Prometheus' `increase`
/// does. None with fewer than two samples.
pub(crate) fn increase(
    history: &History,
    name: &str,
    labels: &Labels,
    window_ms: i64,
) -> Option<(f64, i64)> {
    let mut seen = history
        .window(window_ms)
        .filter_map(|snapshot| Some((snapshot.at_ms, snapshot.value(name, labels)?)));
    let (first_ms, mut previous) = seen.next()?;
    let (mut last_ms, mut total) = (first_ms, 0.0);
    for (at_ms, value) in seen {
        total += if value >= previous {
            value - previous
        } else {
            value
        };
        (previous, last_ms) = (value, at_ms);
    }
    (last_ms > first_ms).then_some((total, last_ms - first_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(names: &[&str]) -> HashSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    // Goal: the exposition parser reads names, escaped label values, special values, and
    // skips comments and unwanted names.
    #[test]
    fn exposition_is_parsed_into_series() {
        let text = "# TYPE keel_x counter\nkeel_x_total{topic=\"a\\\"b\",z=\"1\"} 3\n\
            keel_y 7\nkeel_h_bucket{le=\"+Inf\",topic=\"t\"} 4 1700000000\nkeel_g NaN\n";
        let snapshot = Snapshot::parse(text, &wanted(&["keel_x_total", "keel_h_bucket"]), 5);
        let x = labels(&[("topic", "a\"b"), ("z", "1")]);
        assert_eq!(snapshot.value("keel_x_total", &x), Some(3.0));
        let h = labels(&[("le", "+Inf"), ("topic", "t")]);
        assert_eq!(snapshot.value("keel_h_bucket", &h), Some(4.0));
        assert!(!snapshot.samples.contains_key("keel_y"));
        let z_is_1 = labels(&[("z", "1")]);
        assert_eq!(snapshot.matching("keel_x_total", &z_is_1).count(), 1);
        assert_eq!(
            snapshot
                .matching("keel_x_total", &labels(&[("z", "2")]))
                .count(),
            0
        );
    }

    // Goal: a counter's increase counts a reset from zero, and needs two samples.
    #[test]
    fn increase_handles_counter_resets() {
        let mut history = History::default();
        let series = labels(&[("topic", "t")]);
        for (at_ms, value) in [(0, 10.0), (1000, 20.0), (2000, 5.0), (3000, 8.0)] {
            let text = format!("keel_c_total{{topic=\"t\"}} {value}\n");
            let snapshot = Snapshot::parse(&text, &wanted(&["keel_c_total"]), at_ms);
            history.push(snapshot, 10_000);
            if at_ms == 0 {
                assert_eq!(increase(&history, "keel_c_total", &series, 5000), None);
            }
        }
        // 10 → 20 (+10), reset to 5 (+5), 5 → 8 (+3).
        assert_eq!(
            increase(&history, "keel_c_total", &series, 5000),
            Some((18.0, 3000))
        );
        // The last second: 5 → 8, from the snapshot at the window's start.
        assert_eq!(
            increase(&history, "keel_c_total", &series, 1000),
            Some((3.0, 1000))
        );
    }

    // Goal: the history forgets what no window needs and stays within its bound.
    #[test]
    fn history_is_bounded() {
        let mut history = History::default();
        for at_ms in 0..5000 {
            history.push(
                Snapshot {
                    at_ms,
                    ..Snapshot::default()
                },
                100,
            );
        }
        assert!(
            history.snapshots.len() <= 102,
            "{}",
            history.snapshots.len()
        );
        let mut history = History::default();
        for at_ms in 0..5000 {
            let snapshot = Snapshot {
                at_ms,
                ..Snapshot::default()
            };
            history.push(snapshot, i64::MAX);
        }
        assert!(history.snapshots.len() <= crate::limits::ALERT_SNAPSHOTS_MAX);
        assert_eq!(history.snapshots[0].at_ms, 0);
    }
}
