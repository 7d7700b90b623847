//! A learned baseline of one series for anomaly rules: an exponentially weighted moving mean
//! and variance (West's incremental form), and the z-score of a new value against it.
//!
//! Invariants:
//! - The weight of an observation halves every `half_life`, whatever the evaluation
//!   interval: the step's weight is `1 - 2^(-elapsed / half_life)`.
//! - The deviation used for z-scores is at least [`DEVIATION_FLOOR_RATIO`] of the mean's
//!   magnitude, so a series that was perfectly flat does not fire on its first wiggle (or of
//!   the value's, when larger: a series flat at 0 has no other scale).
//! - A value more than [`CLIP_DEVIATIONS`] deviations from the mean (once the baseline has
//!   [`SAMPLES_MIN`] observations) is an outlier: it is learned clipped to that distance and
//!   [`LEARNING_SLOWDOWN`] times slower, so a collapse or a spike, even a gradual one, barely
//!   moves the mean or widens the deviation before it is flagged.
//! - While its alert is pending or firing, the baseline learns [`LEARNING_SLOWDOWN`] times
//!   slower: the anomaly is not absorbed at once, yet a lasting change of level becomes the
//!   new normal after some ten half-lives instead of firing forever.
//!
//! With a daily seasonality ([`Learned`]) each hour of the day (UTC) also has a baseline of
//! its own, which learns only during its hour. Its clock runs only then: a gap longer than
//! [`SEASON_GAP_MAX`] between two of its observations (the other 23 hours) counts as that
//! long, so yesterday's hour weighs like an hour ago, halving per half-life of the hour's own
//! observations. An hour's baseline judges once it has a day behind it (first learned 23 h
//! ago or more) and [`SAMPLES_MIN`] observations; until then the overall baseline judges.

use std::time::Duration;

use keel_api::alerts::{Baseline as BaselineView, Direction};

/// The smallest deviation, as a share of the mean's magnitude.
pub(crate) const DEVIATION_FLOOR_RATIO: f64 = 0.05;
/// How much slower a baseline learns while its alert is pending or firing.
pub(crate) const LEARNING_SLOWDOWN: f64 = 10.0;
/// How far from the mean, in deviations, a value is clipped to before it is learned.
pub(crate) const CLIP_DEVIATIONS: f64 = 3.0;
/// Observations needed (besides the warm-up time) before a baseline may judge.
pub(crate) const SAMPLES_MIN: u64 = 10;
/// The longest gap an hour-of-day baseline counts between two of its observations.
pub(crate) const SEASON_GAP_MAX: Duration = Duration::from_secs(360);

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A learned mean and variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Baseline {
    mean: f64,
    variance: f64,
    samples: u64,
    /// When the first observation was learned, and the last (milliseconds).
    first_ms: i64,
    last_ms: i64,
}

impl Baseline {
    /// A baseline starting from its first observation.
    pub(crate) fn new(value: f64, now_ms: i64) -> Self {
        Baseline {
            mean: value,
            variance: 0.0,
            samples: 1,
            first_ms: now_ms,
            last_ms: now_ms,
        }
    }

    /// Learns `value` observed at `now_ms`; `slowed` while its alert is pending or firing.
    /// The time since the last observation counts at most `gap_max_ms`.
    fn learn(
        &mut self,
        value: f64,
        now_ms: i64,
        half_life: Duration,
        slowed: bool,
        gap_max_ms: i64,
    ) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms).clamp(0, gap_max_ms) as f64;
        let half_life_ms = half_life.as_millis().max(1) as f64;
        // During the first observations the plain average learns faster than the EWMA, so the
        // baseline does not lean on its first value for hours.
        let mut weight =
            (1.0 - (-elapsed_ms / half_life_ms).exp2()).max(1.0 / (self.samples + 1) as f64);
        let mut difference = value - self.mean;
        let bound = CLIP_DEVIATIONS * self.deviation_at(value);
        let outlier = self.samples >= SAMPLES_MIN && difference.abs() > bound;
        if outlier {
            difference = difference.clamp(-bound, bound);
        }
        if slowed || outlier {
            weight /= LEARNING_SLOWDOWN;
        }
        let increment = weight * difference;
        self.mean += increment;
        self.variance = (1.0 - weight) * (self.variance + difference * increment);
        self.samples += 1;
        self.last_ms = now_ms;
    }

    /// The deviation learned, at least its floor (see the module documentation).
    pub(crate) fn deviation(&self) -> f64 {
        self.deviation_at(self.mean)
    }

    /// The deviation `value` is measured in: the learned one, at least
    /// [`DEVIATION_FLOOR_RATIO`] of the larger of the mean's and the value's magnitudes. The
    /// value's counts too, so that a series flat at 0 has a scale: a value departing from it
    /// is 1 / [`DEVIATION_FLOOR_RATIO`] deviations away at most, never an infinite z that
    /// nothing could ever learn.
    fn deviation_at(&self, value: f64) -> f64 {
        let scale = self.mean.abs().max(value.abs());
        let floor = (DEVIATION_FLOOR_RATIO * scale).max(f64::MIN_POSITIVE);
        self.variance.sqrt().max(floor)
    }

    /// How many deviations `value` is from the mean, signed.
    pub(crate) fn z(&self, value: f64) -> f64 {
        (value - self.mean) / self.deviation_at(value)
    }

    /// Whether the warm-up is over: it may judge.
    pub(crate) fn warmed_up(&self, now_ms: i64, warm_up: Duration) -> bool {
        let learned = Duration::from_millis(now_ms.saturating_sub(self.first_ms).max(0) as u64);
        self.samples >= SAMPLES_MIN && learned >= warm_up
    }
}

/// What an anomaly instance learned: one baseline, and with a daily seasonality one per hour
/// of the day.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Learned {
    overall: Baseline,
    hours: Option<Box<[Option<Baseline>; 24]>>,
}

impl Learned {
    /// Starts learning from a first observation; `daily` for a daily seasonality.
    pub(crate) fn new(value: f64, now_ms: i64, daily: bool) -> Self {
        let mut learned = Learned {
            overall: Baseline::new(value, now_ms),
            hours: daily.then(|| Box::new([None; 24])),
        };
        if let Some(hour) = learned.hour_mut(now_ms) {
            *hour = Some(Baseline::new(value, now_ms));
        }
        learned
    }

    fn hour_mut(&mut self, now_ms: i64) -> Option<&mut Option<Baseline>> {
        let hour = hour_of_day(now_ms);
        self.hours.as_mut().map(|hours| &mut hours[hour])
    }

    /// Learns `value` observed at `now_ms` (see [`Baseline`]).
    pub(crate) fn learn(&mut self, value: f64, now_ms: i64, half_life: Duration, slowed: bool) {
        self.overall
            .learn(value, now_ms, half_life, slowed, i64::MAX);
        let gap_max_ms = SEASON_GAP_MAX.as_millis() as i64;
        match self.hour_mut(now_ms) {
            Some(Some(hour)) => hour.learn(value, now_ms, half_life, slowed, gap_max_ms),
            Some(hour) => *hour = Some(Baseline::new(value, now_ms)),
            None => {}
        }
    }

    /// The baseline that judges at `now_ms`, and its hour when it is an hour's.
    fn judge(&self, now_ms: i64) -> (&Baseline, Option<u8>) {
        let hour = hour_of_day(now_ms);
        let seasonal = self.hours.as_ref().and_then(|hours| hours[hour].as_ref());
        match seasonal {
            Some(baseline)
                if baseline.samples >= SAMPLES_MIN
                    && now_ms - baseline.first_ms >= DAY_MS - HOUR_MS =>
            {
                (baseline, Some(hour as u8))
            }
            _ => (&self.overall, None),
        }
    }

    /// How many deviations `value` is from the judging baseline's mean, signed.
    pub(crate) fn z(&self, value: f64, now_ms: i64) -> f64 {
        self.judge(now_ms).0.z(value)
    }

    /// Whether the warm-up is over: it may judge (the overall baseline's warm-up).
    pub(crate) fn warmed_up(&self, now_ms: i64, warm_up: Duration) -> bool {
        self.overall.warmed_up(now_ms, warm_up)
    }

    /// The judging baseline as the API shows it.
    pub(crate) fn view(&self, now_ms: i64, warm_up: Duration) -> BaselineView {
        let (baseline, hour_of_day) = self.judge(now_ms);
        BaselineView {
            mean: baseline.mean,
            deviation: baseline.deviation(),
            samples: baseline.samples,
            warmed_up: self.warmed_up(now_ms, warm_up),
            hour_of_day,
        }
    }
}

/// The hour of the day (UTC) of a time in milliseconds since the epoch.
fn hour_of_day(now_ms: i64) -> usize {
    now_ms.rem_euclid(DAY_MS).div_euclid(HOUR_MS) as usize
}

/// Whether a z-score is beyond `limit` in the direction a rule watches.
pub(crate) fn beyond(z: f64, limit: f64, direction: Direction) -> bool {
    match direction {
        Direction::Both => z.abs() >= limit,
        Direction::Up => z >= limit,
        Direction::Down => -z >= limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the baseline converges to a steady series' mean and deviation, and a collapse is
    // many deviations away.
    #[test]
    fn baseline_learns_mean_and_deviation() {
        let mut baseline = Baseline::new(100.0, 0);
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 1..2000 {
            let value = 100.0 + 10.0 * (rng.f64() - 0.5) * 2.0;
            baseline.learn(
                value,
                step * 15_000,
                Duration::from_secs(3600),
                false,
                i64::MAX,
            );
        }
        assert!((baseline.mean - 100.0).abs() < 2.0, "{baseline:?}");
        // Uniform on [-10, 10]: deviation 10 / sqrt(3) ≈ 5.8.
        assert!((baseline.deviation() - 5.77).abs() < 1.0, "{baseline:?}");
        assert!(baseline.z(0.0) < -15.0);
        assert!(beyond(baseline.z(0.0), 4.0, Direction::Down));
        assert!(!beyond(baseline.z(0.0), 4.0, Direction::Up));
    }

    // Goal: warm-up needs both the time and the samples.
    #[test]
    fn warm_up_needs_time_and_samples() {
        let mut baseline = Baseline::new(1.0, 0);
        let warm_up = Duration::from_secs(60);
        for step in 1..12 {
            if step == 5 {
                assert!(!baseline.warmed_up(120_000, warm_up), "5 samples");
            }
            let half_life = Duration::from_secs(600);
            baseline.learn(1.0, step * 30_000, half_life, false, i64::MAX);
        }
        assert!(baseline.warmed_up(360_000, warm_up));
    }
}
