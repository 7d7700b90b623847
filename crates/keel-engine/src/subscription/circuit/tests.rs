//! The breaker's state machine, driven with made-up times and answers.

use super::*;

const ANSWERED: Option<Failure> = Some(Failure::Answered);
const REFUSED: Option<Failure> = Some(Failure::Connection { unreached: true });
const DROPPED: Option<Failure> = Some(Failure::Connection { unreached: false });

/// The default policy with 20 min calls and 5 probes (round numbers for the tests), and
/// `changes` applied.
fn breaker(changes: impl FnOnce(&mut CircuitPolicy)) -> CircuitBreaker {
    let mut policy = CircuitPolicy {
        min_calls: 20,
        probes: 5,
        ..CircuitPolicy::default()
    };
    changes(&mut policy);
    CircuitBreaker::new(policy)
}

/// Sends `answers` as requests under leases counting from `lease`, all at `now_ms`; returns
/// the transitions they caused.
fn answer_all(
    circuit: &mut CircuitBreaker,
    lease: &mut u64,
    answers: &[Option<Failure>],
    now_ms: i64,
) -> Vec<Transition> {
    let mut transitions = Vec::new();
    for answer in answers {
        circuit.on_start(*lease);
        transitions.extend(circuit.judge(*lease, *answer, now_ms).transition);
        *lease += 1;
    }
    transitions
}

// Goal: the failure rate opens the circuit only once the window holds min_calls calls, and
// only at the threshold: a sink failing a third of its calls stays closed, one failing half
// opens. Method: feed repeating patterns of answers at one time.
#[test]
fn failure_rate_opens_only_past_min_calls_and_threshold() {
    let mut lease = 1;
    let mut circuit = breaker(|_| {});
    let third = [None, None, ANSWERED];
    for _ in 0..1000 {
        assert!(answer_all(&mut circuit, &mut lease, &third, 0).is_empty());
    }
    assert_eq!(circuit.state(), CircuitState::Closed, "a third failing");

    let mut circuit = breaker(|_| {});
    let all_failed = [ANSWERED; 19];
    assert!(answer_all(&mut circuit, &mut lease, &all_failed, 0).is_empty());
    assert_eq!(circuit.state(), CircuitState::Closed, "under min_calls");
    let opened = answer_all(&mut circuit, &mut lease, &[ANSWERED], 0);
    assert_eq!(
        opened[0].reason,
        Reason::FailureRate {
            failures: 20,
            calls: 20
        }
    );
    assert_eq!(opened[0].to, CircuitState::Open);

    let mut circuit = breaker(|_| {});
    let half = [None, ANSWERED];
    let opened = answer_all(&mut circuit, &mut lease, &[half; 10].concat(), 0);
    assert_eq!(
        opened.iter().map(|t| t.reason).collect::<Vec<_>>(),
        [Reason::FailureRate {
            failures: 10,
            calls: 20
        }],
        "half failing opens at min_calls"
    );
}

// Goal: the window forgets answers older than its span: failures spread thinly over time
// never add up to min_calls, while the same failures within one window do. Method: one
// failure per second (the window is 10 s) against twenty in one second.
#[test]
fn window_slides_over_time() {
    let mut lease = 1;
    let mut circuit = breaker(|_| {});
    for second in 0..100 {
        let answers = [ANSWERED];
        assert!(answer_all(&mut circuit, &mut lease, &answers, second * 1000).is_empty());
    }
    assert_eq!(
        circuit.state(),
        CircuitState::Closed,
        "at most 10 calls a window"
    );
    // Old successes leave the window too: after 10 s of nothing but failures, they are all
    // it holds.
    let mut circuit = breaker(|_| {});
    answer_all(&mut circuit, &mut lease, &[None; 1000], 0);
    assert!(answer_all(&mut circuit, &mut lease, &[ANSWERED; 30], 5_000).is_empty());
    let opened = answer_all(&mut circuit, &mut lease, &[ANSWERED; 20], 10_500);
    assert_eq!(opened.len(), 1, "the successes of time 0 left the window");
}

// Goal: a sink that is down is caught at once: connect_failures connection failures in a row
// open the circuit without waiting for min_calls, and report when the failing began; an
// answer (even a failed one) or a success in between breaks the run. Method: runs of refused
// and dropped connections, broken and unbroken.
#[test]
fn connection_failures_in_a_row_open_at_once() {
    let mut lease = 1;
    let mut circuit = breaker(|_| {});
    answer_all(&mut circuit, &mut lease, &[REFUSED, DROPPED, ANSWERED], 100);
    answer_all(&mut circuit, &mut lease, &[REFUSED, DROPPED, None], 200);
    assert_eq!(circuit.state(), CircuitState::Closed, "runs broken");
    let opened = answer_all(&mut circuit, &mut lease, &[REFUSED, DROPPED, REFUSED], 300);
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].reason, Reason::ConnectFailures { in_row: 3 });
    assert_eq!(
        opened[0].failing_since_ms,
        Some(300),
        "first failure after the success"
    );
    assert_eq!(circuit.probe_at_ms(), Some(5_300), "open for cool_down");
}

// Goal: what a failure costs the event: one that never reached the sink, and any failure
// while the circuit is open or half-open (the one that opens it, answers to requests sent
// before it opened, failed probes), is blamed on the sink; an ordinary failure while closed
// is the event's. Method: judge each kind in each state.
#[test]
fn failures_blamed_on_the_sink() {
    let mut circuit = breaker(|_| {});
    let verdict = circuit.judge(1, ANSWERED, 0);
    assert!(!verdict.blamed_on_sink && !verdict.held_back);
    let verdict = circuit.judge(2, DROPPED, 0);
    assert!(!verdict.blamed_on_sink, "it may have been the event");
    let verdict = circuit.judge(3, REFUSED, 0);
    assert!(
        verdict.blamed_on_sink && !verdict.held_back,
        "never reached"
    );
    let verdict = circuit.judge(4, REFUSED, 0);
    assert!(verdict.transition.is_some(), "third connection failure");
    assert!(
        verdict.blamed_on_sink && verdict.held_back,
        "it opened the circuit"
    );
    let verdict = circuit.judge(5, ANSWERED, 10);
    assert!(
        verdict.blamed_on_sink && verdict.held_back,
        "in flight when it opened"
    );
    assert_eq!(verdict.transition, None);
    let verdict = circuit.judge(6, None, 10);
    assert!(
        !verdict.blamed_on_sink && verdict.transition.is_none(),
        "late success"
    );
    assert_eq!(circuit.state(), CircuitState::Open);
}

// Goal: half-open lets exactly `probes` requests through, decides as soon as their failure
// rate is certain, ignores answers to requests older than the probes, doubles the cool-down
// on each failed round up to cool_down_max, and resets it once closed. Method: rounds of
// probes with scripted answers.
#[test]
fn probes_decide_and_cool_down_grows() {
    let mut circuit = breaker(|policy| {
        policy.cool_down = Duration::from_secs(10);
        policy.cool_down_max = Duration::from_secs(30);
    });
    let mut lease = 1;
    answer_all(&mut circuit, &mut lease, &[REFUSED; 3], 0);
    assert_eq!(circuit.permits(), Some(0));
    assert_eq!(circuit.poll(9_999), None);
    let half = circuit.poll(10_000).expect("half-open");
    assert_eq!(
        (half.to, half.reason),
        (CircuitState::HalfOpen, Reason::CoolDownOver)
    );
    assert_eq!(circuit.permits(), Some(5));
    for _ in 0..5 {
        circuit.on_start(lease);
        lease += 1;
    }
    assert_eq!(circuit.permits(), Some(0), "five probes, no more");
    // An answer from before the opening is no probe.
    assert_eq!(circuit.judge(1, ANSWERED, 10_001).transition, None);
    let first_probe = lease - 5;
    for probe in first_probe..first_probe + 2 {
        assert_eq!(circuit.judge(probe, ANSWERED, 10_010).transition, None);
    }
    let reopened = circuit.judge(first_probe + 2, ANSWERED, 10_020);
    let reopened = reopened.transition.expect("3 of 5 failed: 60 % >= 50 %");
    assert_eq!(
        reopened.reason,
        Reason::ProbesFailed {
            failures: 3,
            probes: 5
        }
    );
    assert_eq!(
        circuit.probe_at_ms(),
        Some(30_020),
        "cool-down doubled to 20 s"
    );
    circuit.poll(30_020).expect("half-open again");
    answer_all(&mut circuit, &mut lease, &[ANSWERED; 3], 30_030);
    assert_eq!(circuit.probe_at_ms(), Some(60_030), "capped at 30 s");
    circuit.poll(60_030).expect("half-open again");
    let closed = answer_all(
        &mut circuit,
        &mut lease,
        &[None, ANSWERED, None, None],
        60_040,
    );
    assert_eq!(
        closed.iter().map(|t| t.reason).collect::<Vec<_>>(),
        [Reason::ProbesPassed {
            successes: 3,
            probes: 5
        }],
        "3 successes of 5: at most 40 % can fail"
    );
    assert_eq!(circuit.state(), CircuitState::Closed);
    assert_eq!(circuit.permits(), None);
    answer_all(&mut circuit, &mut lease, &[REFUSED; 3], 70_000);
    assert_eq!(
        circuit.probe_at_ms(),
        Some(80_000),
        "cool-down back to 10 s"
    );
}
