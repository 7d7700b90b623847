//! One alert instance's state machine, with Prometheus' semantics: `pending` while the
//! condition holds for less than `for`, `firing` after; `keep_firing_for` keeps it firing
//! after the condition clears; `inactive` then.
//!
//! ```text
//!            condition                 held for `for`
//! inactive ────────────▶ pending ─────────────────────▶ firing ──┐ condition, or cleared
//!    ▲                     │ cleared                      │  ▲    │ less than
//!    └─────────────────────┘                              │  └────┘ keep_firing_for ago
//!    └────────────── cleared for keep_firing_for ─────────┘
//! ```

use std::time::Duration;

use keel_api::alerts::AlertState;

/// A change worth telling: the ones appended to `_keel.alerts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// It started firing.
    Fired,
    /// It stopped firing.
    Resolved,
}

/// Where an instance is, and since when (milliseconds, the evaluator's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instance {
    pub(crate) state: AlertState,
    /// When it entered `state` (for `inactive`: when it was made or resolved).
    pub(crate) since_ms: i64,
    /// While firing: the last time the condition held.
    held_at_ms: i64,
}

impl Instance {
    /// A new, inactive instance.
    pub(crate) fn new(now_ms: i64) -> Self {
        Instance {
            state: AlertState::Inactive,
            since_ms: now_ms,
            held_at_ms: now_ms,
        }
    }

    /// Takes one evaluation's result: whether the condition holds at `now_ms`.
    pub(crate) fn step(
        &mut self,
        now_ms: i64,
        holds: bool,
        for_duration: Duration,
        keep_firing_for: Duration,
    ) -> Option<Transition> {
        let elapsed =
            |since: i64| Duration::from_millis(now_ms.saturating_sub(since).max(0) as u64);
        match (self.state, holds) {
            (AlertState::Inactive, true) => {
                self.enter(AlertState::Pending, now_ms);
                self.step(now_ms, true, for_duration, keep_firing_for)
            }
            (AlertState::Pending, true) if elapsed(self.since_ms) >= for_duration => {
                self.enter(AlertState::Firing, now_ms);
                self.held_at_ms = now_ms;
                Some(Transition::Fired)
            }
            (AlertState::Pending, false) => {
                self.enter(AlertState::Inactive, now_ms);
                None
            }
            (AlertState::Firing, true) => {
                self.held_at_ms = now_ms;
                None
            }
            (AlertState::Firing, false) if elapsed(self.held_at_ms) >= keep_firing_for => {
                self.enter(AlertState::Inactive, now_ms);
                Some(Transition::Resolved)
            }
            (AlertState::Pending, true)
            | (AlertState::Firing, false)
            | (AlertState::Inactive, false) => None,
        }
    }

    fn enter(&mut self, state: AlertState, now_ms: i64) {
        self.state = state;
        self.since_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;

    /// Runs the conditions, one per second from 0, and returns the states and transitions.
    fn run(
        conditions: &[bool],
        for_duration: u64,
        keep_firing_for: u64,
    ) -> Vec<(AlertState, Option<Transition>)> {
        let mut instance = Instance::new(0);
        (0..)
            .zip(conditions)
            .map(|(second, holds)| {
                let transition = instance.step(
                    second * SECOND,
                    *holds,
                    Duration::from_secs(for_duration),
                    Duration::from_secs(keep_firing_for),
                );
                (instance.state, transition)
            })
            .collect()
    }

    // Goal: with `for`, an alert is pending until the condition held that long, fires once,
    // and a condition that clears while pending never fires.
    #[test]
    fn for_holds_an_alert_pending() {
        use AlertState::*;
        let states = run(&[true, true, true, false], 2, 0);
        assert_eq!(
            states,
            [
                (Pending, None),
                (Pending, None),
                (Firing, Some(Transition::Fired)),
                (Inactive, Some(Transition::Resolved)),
            ]
        );
        let blip = run(&[true, false, true, false], 2, 0);
        assert!(
            blip.iter()
                .all(|(state, transition)| *state != Firing && transition.is_none())
        );
        // Without `for` it fires at the first evaluation that holds.
        assert_eq!(run(&[true], 0, 0), [(Firing, Some(Transition::Fired))]);
    }

    // Goal: `keep_firing_for` keeps an alert firing through short gaps and resolves it only
    // once the condition stayed clear that long.
    #[test]
    fn keep_firing_for_bridges_gaps() {
        use AlertState::*;
        let states = run(
            &[true, false, false, true, false, false, false, false],
            0,
            3,
        );
        let transitions: Vec<_> = states.iter().filter_map(|(_, t)| *t).collect();
        assert_eq!(transitions, [Transition::Fired, Transition::Resolved]);
        // Cleared at second 4; resolved at second 3 + 3 = 6.
        assert_eq!(states[5].0, Firing);
        assert_eq!(states[6], (Inactive, Some(Transition::Resolved)));
    }
}
