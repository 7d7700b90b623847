//! Supervision of the engine's long-running tasks: a task that panics is restarted with
//! backoff, why is recorded, and one that keeps failing gives up on its own scope only.
//!
//! Each supervised task has a name that says what it is and what it serves
//! (`subscription/billing/reader/3`, `subscription/billing/dispatcher`). When it panics:
//! - the panic's message and time are recorded ([`TaskHealth`], `GET /v1/tasks`), the failure
//!   is counted (`keel_task_restarts_total`), and logged;
//! - it is started again after a backoff: [`RESTART_BACKOFF_INITIAL`], doubling with each
//!   failure in the last [`FAILURE_WINDOW`], at most [`RESTART_BACKOFF_MAX`];
//! - after [`FAILURES_TO_WARN`] failures in the window it is reported as failing
//!   ([`TaskState::Failing`], a `keel.task.failing` notice on `_keel.alerts`): restarting has
//!   not fixed it yet;
//! - after [`FAILURES_TO_GIVE_UP`] failures in the window it is not started again: it
//!   [`TaskState::Failed`] (a `keel.task.failed` notice), and its `give_up` action marks only what it served unavailable (a
//!   subscription refuses service with the reason), never the process.
//!
//! A task that ends without panicking is done (it stops when what it serves stops). A task is
//! restarted in place: its future is built again from the state it shares with its peers, so
//! each supervised task must be written to start over from that state (the readers read from
//! the lane's cursor, the dispatcher takes ready events, the store writes what changed).
//!
//! Invariant: a supervised task runs at most once at a time (the restart loop awaits each run
//! to its end before the next), so a restart never doubles a task.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock::{format_rfc3339_ms, now_ms};
use crate::metrics::{Metrics, TaskLabels};
use crate::notices::Notices;

pub use keel_api::health::{TaskHealth, TaskState};

/// The wait before the first restart.
pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between restarts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How far back failures count towards the backoff, the warning and giving up.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Failures in the window after which a task is reported as failing.
pub const FAILURES_TO_WARN: usize = 3;
/// Failures in the window after which a task is not restarted again (about 6 s of restarts).
pub const FAILURES_TO_GIVE_UP: usize = 6;

/// What a task does when it gives up: marks what it served unavailable, with the reason.
pub(crate) type GiveUp = Box<dyn FnOnce(String) + Send>;

/// The supervisor of every long-running engine task. Cheap to share.
pub struct Supervisor {
    metrics: Arc<Metrics>,
    /// Where a task that keeps failing is reported (`_keel.alerts`).
    notices: Option<Notices>,
    /// Each task that has failed at least once, by name.
    failed: Mutex<BTreeMap<String, TaskRecord>>,
}

#[derive(Debug)]
struct TaskRecord {
    health: TaskHealth,
    /// When each failure in the window came (ms).
    recent_ms: VecDeque<i64>,
}

impl Supervisor {
    pub(crate) fn new(metrics: Arc<Metrics>, notices: Option<Notices>) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            metrics,
            notices,
            failed: Mutex::new(BTreeMap::new()),
        })
    }

    /// Spawns `task` under supervision as `name`: `start` builds the task's future, at first
    /// and at each restart. `give_up` runs once if the task keeps failing. Aborting the
    /// returned handle stops the task and its restarts.
    pub(crate) fn spawn<F, T>(
        self: &Arc<Self>,
        name: String,
        give_up: GiveUp,
        mut start: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut() -> T + Send + 'static,
        T: Future<Output = ()> + Send + 'static,
    {
        let supervisor = self.clone();
        tokio::spawn(async move {
            loop {
                let run = async {
                    crate::faults::maybe_panic_at_start(&name);
                    start().await;
                };
                let Err(panic) = CatchUnwind(Box::pin(run)).await else {
                    return;
                };
                let message = panic_message(panic.as_ref());
                match supervisor.record_failure(&name, &message, now_ms()) {
                    Next::RestartAfter(wait) => tokio::time::sleep(wait).await,
                    Next::GiveUp(reason) => {
                        give_up(reason);
                        return;
                    }
                }
            }
        })
    }

    /// Records a failure of `name` at `now_ms` and says what comes next.
    fn record_failure(&self, name: &str, message: &str, now_ms: i64) -> Next {
        let mut failed = self.failed.lock().expect("supervisor lock");
        let record = failed.entry(name.to_owned()).or_insert_with(|| TaskRecord {
            health: TaskHealth {
                task: name.to_owned(),
                state: TaskState::Restarting,
                failures: 0,
                last_failure: String::new(),
                last_failure_at: String::new(),
            },
            recent_ms: VecDeque::new(),
        });
        let window_ms = i64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(i64::MAX);
        while record
            .recent_ms
            .front()
            .is_some_and(|&at| at <= now_ms - window_ms)
        {
            record.recent_ms.pop_front();
        }
        record.recent_ms.push_back(now_ms);
        let recent = record.recent_ms.len();
        let health = &mut record.health;
        health.failures += 1;
        health.last_failure = message.to_owned();
        health.last_failure_at = format_rfc3339_ms(now_ms);
        let labels = TaskLabels {
            task: name.to_owned(),
        };
        self.metrics.task_failures.get_or_create(&labels).inc();
        let next = if recent >= FAILURES_TO_GIVE_UP {
            health.state = TaskState::Failed;
            self.metrics.task_failed.get_or_create(&labels).set(1);
            Next::GiveUp(format!(
                "its task {name} failed {recent} times in {}, last with: {message}; restart keel once the cause is fixed",
                crate::duration::format(FAILURE_WINDOW)
            ))
        } else {
            health.state = if recent >= FAILURES_TO_WARN {
                TaskState::Failing
            } else {
                TaskState::Restarting
            };
            Next::RestartAfter(restart_backoff(recent))
        };
        match &next {
            Next::GiveUp(reason) => {
                tracing::error!(task = name, failures = recent, %message, %reason, "task keeps failing; not restarting it");
            }
            Next::RestartAfter(wait) => {
                tracing::error!(task = name, failures = recent, %message, restart_in_ms = wait.as_millis() as u64, "task failed; restarting it");
            }
        }
        // Reported once as failing, once as given up.
        let kind = match &next {
            Next::GiveUp(_) => Some("task.failed"),
            Next::RestartAfter(_) if recent == FAILURES_TO_WARN => Some("task.failing"),
            Next::RestartAfter(_) => None,
        };
        if let (Some(kind), Some(notices)) = (kind, &self.notices) {
            let data = serde_json::json!({
                "task": name,
                "state": health.state,
                "failures_in_window": recent,
                "failures": health.failures,
                "last_failure": message,
                "last_failure_at": health.last_failure_at,
            });
            notices.report(kind, name, data);
        }
        next
    }

    /// Forgets the tasks whose names start with `prefix` (what they served was deleted).
    pub(crate) fn forget(&self, prefix: &str) {
        let mut failed = self.failed.lock().expect("supervisor lock");
        failed.retain(|name, _| {
            let gone = name.starts_with(prefix);
            if gone {
                self.metrics.remove_task(name);
            }
            !gone
        });
    }

    /// Every task that has failed since start, by name: its state, failures and last failure.
    pub fn failed_tasks(&self) -> Vec<TaskHealth> {
        let failed = self.failed.lock().expect("supervisor lock");
        failed
            .values()
            .map(|record| record.health.clone())
            .collect()
    }
}

/// What follows a failure.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    RestartAfter(Duration),
    GiveUp(String),
}

/// The wait before restarting a task with `recent` failures in the window (at least 1).
fn restart_backoff(recent: usize) -> Duration {
    let doublings = u32::try_from(recent.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    RESTART_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(RESTART_BACKOFF_MAX)
}

/// A panic's message, when it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// A future that catches a panic while it is polled: it ends with the panic instead of
/// unwinding into its task (and the task, and the engine, carry on).
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(context))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the backoff doubles from 100 ms per recent failure and stops at 30 s.
    #[test]
    fn restart_backoff_doubles_up_to_its_cap() {
        assert_eq!(restart_backoff(1), Duration::from_millis(100));
        assert_eq!(restart_backoff(2), Duration::from_millis(200));
        assert_eq!(restart_backoff(5), Duration::from_millis(1_600));
        assert_eq!(restart_backoff(20), RESTART_BACKOFF_MAX);
    }

    // Goal: failures are counted in a sliding window: a task warns after 3 and gives up after
    // 6 failures within 10 minutes, but failures spread wider apart never add up to that.
    #[test]
    fn failures_in_the_window_warn_then_give_up() {
        let supervisor = Supervisor::new(Arc::new(Metrics::new()), None);
        let window_ms = FAILURE_WINDOW.as_millis() as i64;
        for failure in 0..20 {
            let next = supervisor.record_failure("spread", "boom", failure * window_ms);
            assert_eq!(next, Next::RestartAfter(RESTART_BACKOFF_INITIAL));
        }
        for failure in 1..FAILURES_TO_GIVE_UP {
            let next = supervisor.record_failure("dense", "boom", failure as i64);
            assert!(matches!(next, Next::RestartAfter(_)), "{next:?}");
            let state = supervisor
                .failed_tasks()
                .into_iter()
                .find(|task| task.task == "dense")
                .unwrap()
                .state;
            let expected = if failure >= FAILURES_TO_WARN {
                TaskState::Failing
            } else {
                TaskState::Restarting
            };
            assert_eq!(state, expected, "after {failure} failures");
        }
        let Next::GiveUp(reason) = supervisor.record_failure("dense", "boom", 10) else {
            panic!("a sixth failure gives up");
        };
        assert!(
            reason.contains("failed 6 times") && reason.contains("boom"),
            "{reason}"
        );
        let tasks = supervisor.failed_tasks();
        let dense = tasks.iter().find(|task| task.task == "dense").unwrap();
        assert_eq!((dense.state, dense.failures), (TaskState::Failed, 6));
    }

    // Goal: a supervised task that panics is started again (after the backoff) until it runs
    // to its end, and its failures are recorded. (Giving up is tested on a real process in
    // keel-cli's tests/supervision.rs.)
    #[tokio::test]
    async fn a_panicking_task_is_restarted_until_it_ends() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let supervisor = Supervisor::new(Arc::new(Metrics::new()), None);
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let started = std::time::Instant::now();
        let task = supervisor.spawn("flaky".to_owned(), Box::new(|_| {}), move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move { assert!(run >= 2, "run {run} fails") }
        });
        task.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "backoff 100 + 200 ms"
        );
        let tasks = supervisor.failed_tasks();
        assert_eq!((tasks.len(), tasks[0].failures), (1, 2));
        assert!(tasks[0].last_failure.contains("run 1 fails"), "{tasks:?}");
    }
}
