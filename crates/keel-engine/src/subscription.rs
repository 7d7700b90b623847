//! Subscriptions: durable cursors over a topic that deliver every matching event to a handler
//! until it is acknowledged or dead-lettered.
//!
//! A subscription runs as a few tasks around one [`DeliveryState`](state::DeliveryState)
//! behind a mutex:
//! - a *reader* per partition (and one for events redriven from the dead-letter queue) reads
//!   the log from the lane's cursor, applies the filters and offers events, waiting while the
//!   lane holds its most pending events (`reader.rs`);
//! - a *delivery mode* takes ready events and settles each through the delivery interface
//!   (`delivery.rs`): push sends them to the sink (`push.rs`), pull consumers take them through
//!   [`Subscription::pull`] (`pull.rs`);
//! - a *timer* fires retry times and ack deadlines;
//! - a *store* writes dead letters, then a checkpoint, each fsynced, and tells waiting acks
//!   their state is durable (`store.rs`).
//!
//! The tasks wake each other by the protocol in `signals.rs`.
//!
//! Stored (behind the storage seam, see `storage.rs`): the spec, and two small logs: the
//! checkpoints and the dead-letter queue's operations; a stateful subscription also keeps its
//! keys' state and a log of the commits that change it (`keyed_state.rs`).

mod checkpoint;
pub mod circuit;
mod delivery;
pub(crate) mod dlq;
mod endpoints;
mod health_check;
mod in_process;
mod keyed_state;
pub mod pull;
mod push;
mod reader;
mod signals;
mod sink;
mod sink_health;
pub mod spec;
pub(crate) mod state;
mod store;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::error::{EngineError, SubscriptionError, TopicError};
use crate::limits::{
    LANE_PENDING_BYTES_MIN, LANE_PENDING_MIN, SUBSCRIPTION_PENDING_BYTES_MAX,
    SUBSCRIPTION_PENDING_MAX,
};
use crate::metrics::{FloatGauge, Metrics, SubscriptionLabels};
use crate::storage::SubscriptionLogs;
use crate::supervisor::{GiveUp, Supervisor};
use crate::topic::{EmitTargets, Topic};
use checkpoint::{Checkpoint, CheckpointLog};
use circuit::{CircuitBreaker, CircuitState};
use delivery::Deliveries;
pub use dlq::DeadLetterEntry;
use dlq::DeadLetterQueue;
use keyed_state::KeyedState;
pub use keyed_state::{KeyState, StoredKeyState, emitted_event, stored_state};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use pull::{AckResult, PulledMessage};
use signals::Signals;
use sink_health::SinkOutages;
use spec::SubscriptionSpec;
use state::DeliveryState;
use store::Durability;

/// A supervised task's run (`Subscription::start`).
type TaskFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts one of a subscription's tasks from its shared state.
type TaskStart = fn(Arc<Shared>) -> TaskFuture;

/// The prefix of the names of a subscription's supervised tasks.
pub(crate) fn task_prefix(subscription: &str) -> String {
    format!("subscription/{subscription}/")
}

/// What a subscription's mutable state holds, behind one lock.
#[derive(Debug)]
struct Core {
    delivery: DeliveryState,
    paused: Option<String>,
    /// Whether keel paused it (the sink failing past `pause_after`). Invariant: only while
    /// `paused` is some.
    auto_paused: bool,
    /// When the sink's failing time for `pause_after` counts from at the earliest: the last
    /// resume (or the start), so that a resumed sink gets the whole period again.
    pause_clock_ms: i64,
    /// Health checks resumed keel's pause during the sink's running outage. Its checks pass
    /// while its deliveries fail, then: they may not resume the next pause of that outage, or
    /// the subscription would flap. Cleared once the outage ends. (In memory: after a restart
    /// the checks may resume once more.)
    checks_resumed_in_outage: bool,
    /// A push subscription's circuit breaker, unless the spec turns it off.
    circuit: Option<CircuitBreaker>,
    /// The sink's outages, when something can tell them: the breaker, or the endpoints of a
    /// group or with health checks.
    sink_outages: Option<SinkOutages>,
    /// Ids of redriven dead-letter entries whose redelivery was acknowledged: the store
    /// removes them from the queue.
    redrive_acked: Vec<String>,
    /// A state rebuild is switching over: nothing is handed out (not stored: a crash ends it).
    rebuilding: bool,
    /// A sink with `handshake`: where its validation handshake stands (`push/handshake.rs`).
    /// In memory: each start of the dispatcher does the handshake again.
    handshake: Option<String>,
}

/// Everything a subscription's tasks share.
struct Shared {
    name: String,
    spec: SubscriptionSpec,
    /// Where the circuit's openings and closings and keel's pauses are reported.
    notices: crate::notices::Notices,
    /// A push subscription's sink: its endpoints and their state.
    sink: Option<Arc<sink::PushSink>>,
    topic: Arc<Topic>,
    metrics: Arc<Metrics>,
    labels: SubscriptionLabels,
    core: Mutex<Core>,
    /// Held across the queue's fsyncs and compactions, so only blocking threads take it;
    /// async code reads `dlq_depth` and `dlq_redriven` instead.
    dlq: Mutex<DeadLetterQueue>,
    /// The queue's depth after its last change.
    dlq_depth: std::sync::atomic::AtomicUsize,
    /// Whether redriven entries wait to be handed over, after the queue's last change.
    dlq_redriven: std::sync::atomic::AtomicBool,
    checkpoints: Mutex<CheckpointLog>,
    /// How the tasks wake each other (`signals.rs`).
    signals: Signals,
    /// How far the state is durable, and who waits for it (`store.rs`).
    durability: Durability,
    /// Part of every ack id: ack ids from before a restart are stale.
    boot: u32,
    /// The engine's shutdown signal (ends long polls early).
    closing: watch::Receiver<bool>,
    /// Builds the sink's HTTP clients (egress policy, trusted roots).
    sinks: crate::webhook::SinkClients,
    /// A stateful subscription's per-key state.
    keyed: Option<KeyedState>,
    /// Where a stateful subscription's handlers may emit events.
    targets: EmitTargets,
    /// In a cluster, how long this node's lease on the subscription is sure to last: past
    /// it, nothing is handed out (another node may hold the lease).
    tenure: std::sync::OnceLock<crate::engine::Tenure>,
}

impl Shared {
    /// Why nothing may be handed out now: this node's lease may have lapsed.
    fn lapsed(&self) -> Option<String> {
        let tenure = self.tenure.get()?;
        (!tenure.is_valid()).then(|| {
            "this node's lease on the subscription was not renewed in time (the node was paused or cut off from NATS): another node may hold it, so nothing is handed out here until the lease is renewed".to_owned()
        })
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().expect("subscription state lock")
    }

    /// Runs an operation on the dead-letter queue (blocking: call it on a blocking thread)
    /// and publishes the queue's depth and redrive state for async readers.
    fn with_dlq<T>(
        &self,
        operation: impl FnOnce(&mut DeadLetterQueue) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut dlq = self.dlq.lock().expect("dlq lock");
        let result = operation(&mut dlq);
        self.dlq_depth.store(dlq.depth(), Relaxed);
        self.dlq_redriven.store(dlq.has_redriven(), Relaxed);
        result
    }

    /// Removes the dead-letter entries of generations before the state's: a rebuild replayed
    /// their events. Blocking.
    fn remove_older_dead_letters(&self) -> Result<(), EngineError> {
        let generation = self.generation();
        if generation == 0 {
            return Ok(());
        }
        self.with_dlq(|dlq| {
            let ids = dlq
                .older_than(generation)?
                .into_iter()
                .map(|entry| entry.id)
                .collect();
            dlq.remove(ids)
        })
    }

    /// A stateful subscription's rebuild generation (0 for any other).
    fn generation(&self) -> u64 {
        self.keyed.as_ref().map_or(0, KeyedState::generation)
    }

    /// Counts `count` attempts that ended as `outcome` (a metric label).
    fn count_attempts(&self, outcome: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        let labels = crate::metrics::AttemptLabels {
            subscription: self.name.clone(),
            outcome,
        };
        self.metrics
            .subscription_attempts
            .get_or_create(&labels)
            .inc_by(count);
    }

    /// Pauses (with a reason) or resumes delivery, durably. An operator's pause or resume
    /// replaces keel's; a resume lets an open circuit's probes go at once and gives the sink
    /// its whole `pause_after` again.
    async fn set_paused(&self, paused: Option<String>) -> Result<(), EngineError> {
        self.switch_pause(paused, None).await.map(|_| ())
    }

    /// Resumes the subscription if keel paused it (not an operator, who may have paused or
    /// resumed it since), announcing why; returns whether it did.
    async fn resume_keels_pause(&self, why: String) -> Result<bool, EngineError> {
        self.switch_pause(None, Some(why)).await
    }

    /// Sets the pause; with `keels_resume` (why), only resumes a pause of keel's, announced
    /// before anything is delivered again.
    async fn switch_pause(
        &self,
        paused: Option<String>,
        keels_resume: Option<String>,
    ) -> Result<bool, EngineError> {
        self.durability.check_available(&self.name)?;
        let version = {
            let mut core = self.core();
            if let Some(why) = keels_resume {
                if !core.auto_paused || core.checks_resumed_in_outage {
                    return Ok(false);
                }
                core.checks_resumed_in_outage = true;
                tracing::info!(subscription = %self.name, reason = %why, "resuming the subscription keel paused");
                let data =
                    serde_json::json!({"subscription": self.name, "reason": why, "by": "keel"});
                self.notices
                    .report("subscription.resumed", &self.name, data);
            }
            let now = now_ms();
            if paused.is_none() {
                core.pause_clock_ms = now;
                if let Some(circuit) = core.circuit.as_mut() {
                    circuit.probe_now(now);
                }
            }
            core.paused = paused;
            core.auto_paused = false;
            core.delivery.touch()
        };
        self.signals.changed(true);
        self.durability.wait(&self.name, version).await?;
        Ok(true)
    }

    /// Whether keel paused the subscription (see [`Shared::resume_keels_pause`]).
    fn paused_by_keel(&self) -> bool {
        self.core().auto_paused
    }

    /// Reports a change of an endpoint's availability: logged, announced, followed into the
    /// sink's outages (none available holds the sink down), and a gain wakes the dispatcher,
    /// which may have been waiting for an available endpoint.
    fn endpoint_changed(&self, sink: &sink::PushSink, change: &endpoints::Change) {
        let all_down_since = sink.all_down_since_ms();
        if let Some(outages) = self.core().sink_outages.as_mut() {
            let now = now_ms();
            match all_down_since {
                Some(since) => {
                    let reason = "no endpoint is available".to_owned();
                    outages.down(sink_health::Cause::Endpoints, since, now, reason);
                }
                None => outages.up(sink_health::Cause::Endpoints, now),
            }
        }
        let url = sink.url_of(change);
        sink::log_change(&self.name, url, change);
        let (kind, until) = match change {
            endpoints::Change::Ejected { until_ms, .. } => ("endpoint.ejected", Some(*until_ms)),
            endpoints::Change::Readmitted { .. } => ("endpoint.readmitted", None),
            endpoints::Change::Unhealthy { .. } => ("endpoint.unhealthy", None),
            endpoints::Change::Healthy { .. } => ("endpoint.healthy", None),
        };
        let data = serde_json::json!({
            "subscription": self.name,
            "endpoint": crate::webhook::redacted_url(url).as_str(),
            "ejected_until": until.map(crate::clock::format_rfc3339_ms),
        });
        self.notices.report(kind, &self.name, data);
        if matches!(
            change,
            endpoints::Change::Readmitted { .. } | endpoints::Change::Healthy { .. }
        ) {
            self.signals.changed(true);
        }
    }

    /// Announces a change of the sink's circuit: logged with its reason, an opening counted
    /// as an outage, and an opening or closing reported on `_keel.alerts`. Every transition
    /// passes here (from `Deliveries::take` and `Deliveries::settle`).
    fn announce(&self, transition: Option<circuit::Transition>) {
        let Some(transition) = transition else {
            return;
        };
        let (from, to) = (transition.from, transition.to);
        let reason = transition.reason.name();
        let detail = transition.reason.to_string();
        match to {
            CircuitState::Open => {
                tracing::warn!(subscription = %self.name, ?from, ?to, reason, %detail, "sink circuit opened: not sending until the cool-down ends");
            }
            CircuitState::HalfOpen => {
                tracing::info!(subscription = %self.name, ?from, ?to, reason, %detail, "sink circuit half-open: sending probes");
            }
            CircuitState::Closed => {
                tracing::info!(subscription = %self.name, ?from, ?to, reason, %detail, "sink circuit closed: delivering again");
            }
        }
        let kind = match (from, to) {
            (CircuitState::Closed, _) => Some("circuit.opened"),
            (_, CircuitState::Closed) => Some("circuit.closed"),
            _ => None,
        };
        if let Some(kind) = kind {
            let data = serde_json::json!({
                "subscription": self.name,
                "from": from,
                "to": to,
                "reason": reason,
                "detail": detail,
            });
            self.notices.report(kind, &self.name, data);
        }
    }

    /// Records an acknowledged event's publish → ack latency.
    fn observe_ack(&self, published_ms: i64) {
        let seconds = (now_ms() - published_ms).max(0) as f64 / 1000.0;
        self.metrics
            .subscription_delivery_seconds
            .get_or_create(&self.labels)
            .observe(seconds);
    }
}

/// A running subscription.
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// In-process handlers attached to it.
    handlers: Mutex<Vec<HandlerRun>>,
    /// Held through a rebuild: rebuilds asked for at once run one after the other (the
    /// first one's end must not let deliveries out while the next one switches over).
    rebuilds: tokio::sync::Mutex<()>,
}

/// An in-process handler attached to a subscription ([`crate::Engine::attach`]): stop it to
/// detach it (its calls in flight finish first). Dropping it leaves the handler running until
/// the subscription stops.
#[derive(Clone)]
pub struct Attached {
    stop: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

/// An attached handler apart from its run: what an update needs to attach it again.
pub(crate) struct DetachedHandler {
    handler: Arc<dyn crate::handler::Handler>,
    /// The handle its caller holds: its stop ends the handler across updates.
    attached: Attached,
    /// Turns the handle's `done` true: once the handler stopped for good.
    finished: Arc<watch::Sender<bool>>,
}

impl Drop for DetachedHandler {
    /// Not attached again (an update failed, or its subscription is gone): it is finished, so
    /// that a stop of its handle returns.
    fn drop(&mut self) {
        self.finished.send_replace(true);
    }
}

/// An attached handler running on one subscription.
struct HandlerRun {
    detached: DetachedHandler,
    /// Ends this run (draining its calls) without stopping the handle.
    detach: watch::Sender<bool>,
    /// True once this run ended.
    run_done: watch::Receiver<bool>,
}

/// Tells when a stopped subscription's shared state is dropped: its tasks ended and no
/// request holds it (a long poll ends at the stop; a dead-letter call or a state read ends
/// soon after). Until then its logs are open, and opening them again would make two writers.
pub(crate) struct ReleaseWatch(std::sync::Weak<Shared>);

impl ReleaseWatch {
    /// Waits until the state is dropped, at most `wait`; whether it was.
    pub(crate) async fn released(&self, wait: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.0.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

impl Attached {
    /// Stops taking events, and returns once the calls in flight finished and were settled
    /// (at most about 30 seconds; later ones are delivered again).
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|done| *done).await;
    }
}

/// What the engine gives each subscription it opens, beside its spec and logs.
#[derive(Clone)]
pub(crate) struct Surroundings {
    /// The topics a stateful subscription's handlers may emit to.
    pub(crate) targets: EmitTargets,
    /// The engine's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The engine's shutdown signal.
    pub(crate) closing: watch::Receiver<bool>,
    /// Builds the HTTP clients of push sinks, their health checks and handshakes.
    pub(crate) sinks: crate::webhook::SinkClients,
}

/// A subscription as describe shows it, its spec as the engine holds it.
pub type SubscriptionInfo = keel_api::subscriptions::SubscriptionInfo<
    crate::filter::Filters,
    crate::webhook::WebhookSecret,
>;
pub use keel_api::subscriptions::{LastError, PartitionProgress};

impl Subscription {
    /// Opens a stored subscription from its logs (and a stateful one's state; `targets` are
    /// the topics its handlers may emit to). Blocking.
    pub(crate) fn open(
        name: &str,
        spec: SubscriptionSpec,
        logs: SubscriptionLogs,
        topic: Arc<Topic>,
        surroundings: &Surroundings,
    ) -> Result<Self, EngineError> {
        let Surroundings {
            targets,
            metrics,
            closing,
            sinks,
        } = surroundings.clone();
        let keyed = logs
            .state
            .map(|state| KeyedState::open(name, state, targets.clone()))
            .transpose()?;
        let (checkpoints, newest) = CheckpointLog::open(logs.checkpoints)?;
        let checkpoint = newest.ok_or_else(|| EngineError::Topic(TopicError::InvalidConfig {
            detail: format!(
                "subscription {name:?} has no checkpoint; delete the subscription and create it again"
            ),
        }))?;
        let partitions = topic.config.partitions as usize;
        if checkpoint.lanes.len() != partitions {
            return Err(EngineError::Topic(TopicError::InvalidConfig {
                detail: format!(
                    "the checkpoint of {name:?} has {} partitions, its topic {partitions}",
                    checkpoint.lanes.len()
                ),
            }));
        }
        let dlq = DeadLetterQueue::open(logs.dead_letters)?;
        let delivery = DeliveryState::restore(
            spec.ordering,
            spec.max_in_flight as usize,
            lane_pending_max(partitions),
            &checkpoint.lanes,
        )
        .with_lane_bytes_max(lane_bytes_max(partitions));
        // The breaker guards a handler that can be down: a push sink.
        let circuit = (spec.is_push() && spec.circuit_breaker.enabled)
            .then(|| CircuitBreaker::new(spec.circuit_breaker));
        let sink = match &spec.delivery {
            spec::Delivery::Push(sink) => {
                let sink = sink::PushSink::new(sink).map_err(|detail| {
                    EngineError::Subscription(SubscriptionError::Invalid { detail })
                })?;
                Some(Arc::new(sink))
            }
            spec::Delivery::Pull => None,
        };
        let judged = circuit.is_some() || sink.as_ref().is_some_and(|s| s.judges_endpoints());
        let sink_outages = judged.then(|| SinkOutages::new(now_ms()));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            labels: SubscriptionLabels {
                subscription: name.to_owned(),
            },
            spec,
            notices: crate::notices::Notices::new(targets.clone()),
            sink,
            topic,
            metrics,
            core: Mutex::new(Core {
                delivery,
                auto_paused: checkpoint.auto_paused && checkpoint.paused.is_some(),
                paused: checkpoint.paused,
                pause_clock_ms: now_ms(),
                checks_resumed_in_outage: false,
                circuit,
                sink_outages,
                redrive_acked: Vec::new(),
                rebuilding: false,
                handshake: None,
            }),
            dlq_depth: std::sync::atomic::AtomicUsize::new(dlq.depth()),
            dlq_redriven: std::sync::atomic::AtomicBool::new(dlq.has_redriven()),
            dlq: Mutex::new(dlq),
            checkpoints: Mutex::new(checkpoints),
            signals: Signals::new(),
            durability: Durability::new(),
            // Below 2^31: the ack id's first character (the boot's top six bits) is then a
            // letter, never `-` or `_`, which a command line would take for an option.
            boot: fastrand::u32(..BOOT_LIMIT),
            closing,
            keyed,
            targets,
            sinks,
            tenure: std::sync::OnceLock::new(),
        });
        // A crash may have come between a rebuild and the removal of older entries.
        shared.remove_older_dead_letters()?;
        Ok(Subscription {
            shared,
            tasks: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
            rebuilds: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the subscription's tasks under `supervisor`, each named
    /// `subscription/{name}/{task}`: a task that panics is restarted from the shared state;
    /// one that keeps failing makes the subscription refuse service with the reason. Call
    /// inside the runtime.
    /// In a cluster: hands out nothing once `tenure` lapses (set once, before start).
    pub(crate) fn set_tenure(&self, tenure: crate::engine::Tenure) {
        let _ = self.shared.tenure.set(tenure);
    }

    /// Wakes whatever waits to hand events out (a lapsed tenure was renewed).
    pub(crate) fn wake(&self) {
        self.shared.signals.changed(true);
    }

    pub(crate) fn start(&self, supervisor: &Arc<Supervisor>) {
        let shared = &self.shared;
        let mut tasks = self.tasks.lock().expect("tasks lock");
        let mut supervise = |task: String, start: Box<dyn FnMut() -> TaskFuture + Send>| {
            let failing = shared.clone();
            let give_up: GiveUp = Box::new(move |reason| failing.durability.fail(reason));
            let name = format!("{}{task}", task_prefix(&shared.name));
            tasks.push(supervisor.spawn(name, give_up, start));
        };
        for lane in 0..shared.topic.config.partitions {
            let shared = shared.clone();
            supervise(
                format!("reader/{lane}"),
                Box::new(move || Box::pin(reader::read_partition(shared.clone(), lane))),
            );
        }
        let restartable: [(&str, TaskStart); 3] = [
            ("redrive_reader", |shared| {
                Box::pin(reader::read_redriven(shared))
            }),
            ("store", |shared| Box::pin(store::run(shared))),
            ("timers", |shared| Box::pin(run_timers(shared))),
        ];
        for (task, run) in restartable {
            let shared = shared.clone();
            supervise(task.to_owned(), Box::new(move || run(shared.clone())));
        }
        if shared.keyed.is_some() {
            let shared = shared.clone();
            supervise(
                "state".to_owned(),
                Box::new(move || Box::pin(keyed_state::run(shared.clone()))),
            );
        }
        // Each delivery mode's own task, if it has one; pull runs in consumers' requests.
        if let (Some(sink), spec::Delivery::Push(spec)) = (&shared.sink, &shared.spec.delivery) {
            let (deliveries, dispatched) = (Deliveries::new(shared.clone()), sink.clone());
            supervise(
                "dispatcher".to_owned(),
                Box::new(move || Box::pin(push::dispatch(deliveries.clone(), dispatched.clone()))),
            );
            if let Some(policy) = &spec.health_check {
                let checks = Arc::new(health_check::HealthChecks::new(
                    shared.clone(),
                    sink.clone(),
                    policy.clone(),
                ));
                supervise(
                    "health_check".to_owned(),
                    Box::new(move || Box::pin(health_check::run(checks.clone()))),
                );
            }
        }
        shared.signals.changed(true);
    }

    /// Attaches an in-process handler (a pull subscription's consumer inside this process).
    /// Call inside the runtime.
    pub(crate) fn attach(
        &self,
        handler: Arc<dyn crate::handler::Handler>,
    ) -> Result<Attached, EngineError> {
        if self.shared.spec.is_push() {
            return Err(EngineError::Subscription(
                SubscriptionError::WrongDeliveryMode {
                    detail: format!(
                        "subscription {:?} pushes to a sink; attach handlers to a subscription without one",
                        self.shared.name
                    ),
                },
            ));
        }
        let (stop, _) = watch::channel(false);
        let (finished, done) = watch::channel(false);
        let attached = Attached {
            stop: Arc::new(stop),
            done,
        };
        self.run_handler(DetachedHandler {
            handler,
            attached: attached.clone(),
            finished: Arc::new(finished),
        });
        Ok(attached)
    }

    /// Runs an attached handler on this subscription until its [`Attached`] handle stops it,
    /// the subscription stops, or an update detaches it ([`Subscription::detach_handlers`]).
    fn run_handler(&self, detached: DetachedHandler) {
        let (detach, detaching) = watch::channel(false);
        let (ran, run_done) = watch::channel(false);
        let deliveries = Deliveries::new(self.shared.clone());
        let handler = detached.handler.clone();
        let stop = detached.attached.stop.subscribe();
        let finished = detached.finished.clone();
        tokio::spawn(async move {
            in_process::run(deliveries, handler, stop, detaching.clone()).await;
            // Detached by an update, it goes on with the updated subscription: not finished.
            if !*detaching.borrow() {
                finished.send_replace(true);
            }
            ran.send_replace(true);
        });
        self.handlers
            .lock()
            .expect("handlers lock")
            .push(HandlerRun {
                detached,
                detach,
                run_done,
            });
    }

    /// Detaches every attached handler without stopping its [`Attached`] handle, once its
    /// calls in flight finished and were settled: an update attaches them again to the
    /// subscription opened with the new spec ([`Subscription::reattach_handlers`]).
    pub(crate) async fn detach_handlers(&self) -> Vec<DetachedHandler> {
        let runs = std::mem::take(&mut *self.handlers.lock().expect("handlers lock"));
        let mut detached = Vec::with_capacity(runs.len());
        for mut run in runs {
            run.detach.send_replace(true);
            let _ = run.run_done.wait_for(|done| *done).await;
            detached.push(run.detached);
        }
        detached
    }

    /// Attaches again the handlers an update detached from this subscription's former self;
    /// one whose handle was stopped meanwhile is finished instead. Call inside the runtime.
    pub(crate) fn reattach_handlers(&self, detached: Vec<DetachedHandler>) {
        for handler in detached {
            // Stopped meanwhile: dropped, it is finished.
            if !*handler.attached.stop.borrow() {
                self.run_handler(handler);
            }
        }
    }

    /// Stops every task after a last checkpoint; attached handlers' calls in flight finish
    /// first.
    pub(crate) async fn stop(&self) {
        let handlers = std::mem::take(&mut *self.handlers.lock().expect("handlers lock"));
        for run in handlers {
            run.detached.attached.stop().await;
        }
        let shared = &self.shared;
        let version = shared.core().delivery.version();
        shared.signals.changed(false);
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            shared.durability.wait(&shared.name, version),
        )
        .await;
        shared.signals.stop();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // Nothing will be stored any more: a call still waiting for durability (an ack that
        // raced a delete or shutdown) is answered now instead of at its request timeout.
        shared
            .durability
            .fail("it was deleted or updated, or keel is stopping".to_owned());
    }

    /// A handle that tells when nothing holds this subscription's shared state any more: its
    /// logs, dead-letter queue and state table are then closed, and may be opened again.
    pub(crate) fn release_watch(&self) -> ReleaseWatch {
        ReleaseWatch(Arc::downgrade(&self.shared))
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    /// Why it refuses service, when its storage failed.
    pub(crate) fn unavailable(&self) -> Option<String> {
        self.shared.durability.failed()
    }

    pub(crate) fn spec(&self) -> &SubscriptionSpec {
        &self.shared.spec
    }

    pub(crate) fn topic_name(&self) -> &str {
        &self.shared.spec.topic
    }

    /// Its state for describe; also refreshes its gauges.
    pub(crate) fn info(&self) -> SubscriptionInfo {
        let shared = &self.shared;
        let dlq_depth = shared.dlq_depth.load(std::sync::atomic::Ordering::Relaxed);
        let core = shared.core();
        let positions = core.delivery.lane_positions();
        let partitions: Vec<PartitionProgress> = (0u32..)
            .zip(positions)
            .map(|(partition, (committed, cursor))| PartitionProgress {
                partition,
                committed,
                cursor,
                next_offset: shared
                    .topic
                    .partitions()
                    .get(partition as usize)
                    .map_or(cursor, |p| p.info().next_offset),
            })
            .collect();
        let lag = partitions
            .iter()
            .map(|p| p.next_offset.saturating_sub(p.committed))
            .sum::<u64>()
            + core.delivery.redrive_pending() as u64;
        let counters = &core.delivery.counters;
        let mut spec = shared.spec.clone();
        if let spec::Delivery::Push(sink) = &mut spec.delivery {
            // Secrets are shown once, when keel makes them; describe shows only how long a
            // rotated-out one still signs.
            sink.secret = None;
            sink.previous_secret = sink.previous_secret.take().and_then(|previous| {
                let ended = crate::clock::parse_rfc3339_ms(&previous.until)
                    .is_none_or(|until_ms| until_ms <= now_ms());
                (!ended).then_some(keel_api::subscriptions::PreviousSecret {
                    secret: None,
                    until: previous.until,
                })
            });
        }
        if spec.start == spec::StartPosition::Default {
            spec.start = spec::StartPosition::Named(spec::NamedPosition::Latest);
        }
        let info = SubscriptionInfo {
            name: shared.name.clone(),
            mode: spec.mode(),
            spec,
            paused: core.paused.clone(),
            lag,
            in_flight: core.delivery.in_flight(),
            pending: core.delivery.pending_count(),
            delivered: counters.delivered,
            retried: counters.retried,
            dead_lettered: counters.dead_lettered,
            skipped_by_retention: counters.skipped_by_retention,
            dlq_depth,
            circuit: core.circuit.as_ref().map(CircuitBreaker::state),
            sink_health: core.sink_outages.as_ref().map(|o| o.report(now_ms())),
            endpoints: shared
                .sink
                .as_ref()
                .map(|sink| sink.describe(now_ms()))
                .unwrap_or_default(),
            handshake: core.handshake.clone(),
            last_error: counters
                .last_error
                .as_ref()
                .map(|(at_ms, error)| LastError {
                    at: crate::clock::format_rfc3339_ms(*at_ms),
                    error: error.clone(),
                }),
            unavailable: shared.durability.failed(),
            partitions,
        };
        drop(core);
        self.publish_gauges(&info);
        info
    }

    fn publish_gauges(&self, info: &SubscriptionInfo) {
        let (metrics, labels) = (&self.shared.metrics, &self.shared.labels);
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics
            .subscription_lag
            .get_or_create(labels)
            .set(gauge(info.lag));
        metrics
            .subscription_in_flight
            .get_or_create(labels)
            .set(gauge(info.in_flight as u64));
        metrics
            .subscription_dlq_depth
            .get_or_create(labels)
            .set(gauge(info.dlq_depth as u64));
        metrics
            .subscription_paused
            .get_or_create(labels)
            .set(i64::from(info.paused.is_some()));
        if let Some(circuit) = info.circuit {
            metrics
                .subscription_circuit_state
                .get_or_create(labels)
                .set(circuit.gauge_value());
        }
        if let Some(health) = &info.sink_health {
            let families = HealthFamilies {
                outages: &metrics.subscription_sink_outages,
                down: &metrics.subscription_sink_down_seconds,
                availability: &metrics.subscription_sink_availability,
                mtbf: &metrics.subscription_sink_mtbf_seconds,
                mttr: &metrics.subscription_sink_mttr_seconds,
                detect: &metrics.subscription_sink_detect_seconds,
            };
            families.publish(labels, health);
        }
        for endpoint in &info.endpoints {
            let labels = crate::metrics::EndpointLabels {
                subscription: info.name.clone(),
                endpoint: endpoint.url.clone(),
            };
            metrics
                .subscription_endpoint_available
                .get_or_create(&labels)
                .set(i64::from(endpoint.available));
            let families = HealthFamilies {
                outages: &metrics.subscription_endpoint_outages,
                down: &metrics.subscription_endpoint_down_seconds,
                availability: &metrics.subscription_endpoint_availability,
                mtbf: &metrics.subscription_endpoint_mtbf_seconds,
                mttr: &metrics.subscription_endpoint_mttr_seconds,
                detect: &metrics.subscription_endpoint_detect_seconds,
            };
            if let Some(health) = &endpoint.health {
                families.publish(&labels, health);
            }
        }
    }

    /// Pauses delivery (durably); in-flight deliveries finish.
    pub(crate) async fn pause(&self, reason: &str) -> Result<(), EngineError> {
        self.shared.set_paused(Some(reason.to_owned())).await
    }

    /// Resumes delivery (durably).
    pub(crate) async fn resume(&self) -> Result<(), EngineError> {
        self.shared.set_paused(None).await
    }

    /// Moves every partition's cursor to `starts` (durably). Pending and in-flight events are
    /// dropped; their acks turn stale.
    pub(crate) async fn seek(&self, starts: &[u64]) -> Result<(), EngineError> {
        self.seek_lanes(starts, false).await
    }

    /// [`Subscription::seek`], dropping the redriven events too when `drop_redriven`. Returns
    /// once a store round after the move is durable: every dead letter decided before is
    /// written.
    async fn seek_lanes(&self, starts: &[u64], drop_redriven: bool) -> Result<(), EngineError> {
        let shared = &self.shared;
        shared.durability.check_available(&shared.name)?;
        let version = {
            let mut core = shared.core();
            core.delivery.seek(starts, drop_redriven);
            core.delivery.version()
        };
        shared.signals.reset_readers();
        shared.signals.changed(true);
        shared.durability.wait(&shared.name, version).await
    }

    /// The dead-letter queue, to list, show, redrive or purge. Blocking calls: run them on a
    /// blocking thread.
    pub(crate) fn with_dlq<T>(
        &self,
        operation: impl FnOnce(&mut DeadLetterQueue, &str) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let name = &self.shared.name;
        let result = self.shared.with_dlq(|dlq| operation(dlq, name));
        self.shared.signals.wake_readers();
        result
    }

    /// Pulls up to `max` events, long-polling up to `wait` for the first.
    pub(crate) async fn pull(
        &self,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<PulledMessage>, EngineError> {
        pull::pull(&Deliveries::new(self.shared.clone()), max, wait).await
    }

    /// Acknowledges, nacks or rejects pulled events; returns once the result is durable. (A
    /// stateful subscription's acks are commits that leave the state unchanged.)
    pub(crate) async fn settle(
        &self,
        ack_ids: &[String],
        action: pull::Settle,
    ) -> Result<AckResult, EngineError> {
        let deliveries = Deliveries::new(self.shared.clone());
        if self.shared.keyed.is_some() && action == pull::Settle::Ack {
            return self.commit(ack_ids, Vec::new()).await;
        }
        pull::settle(&deliveries, ack_ids, action).await
    }

    /// Acknowledges pulled events with commits: each one's state, emitted events and ack at
    /// once, durably. `ack_ids` commit no state or events; the answer lists `ack_ids` first.
    pub(crate) async fn commit(
        &self,
        ack_ids: &[String],
        acks: Vec<keel_api::state::StatefulAck>,
    ) -> Result<AckResult, EngineError> {
        let mut commits: Vec<pull::AckCommit> = ack_ids
            .iter()
            .map(|ack_id| pull::AckCommit {
                ack_id: ack_id.clone(),
                effects: keyed_state::Effects::none(),
            })
            .collect();
        for (index, ack) in (ack_ids.len()..).zip(acks) {
            commits.push(pull::AckCommit {
                effects: keyed_state::Effects::checked(
                    index,
                    ack.state,
                    ack.emit,
                    &self.shared.targets,
                )?,
                ack_id: ack.ack_id,
            });
        }
        pull::commit(&Deliveries::new(self.shared.clone()), commits).await
    }

    /// Drops every key's state and replays the topic from `starts` (its first offsets),
    /// durably:
    ///
    /// 1. The deliveries in flight turn stale, and the cursor moves (durably), the redriven
    ///    events dropped: the replay delivers every event again.
    /// 2. The dead-lettered events never applied are marked so (durably): when the replay
    ///    applies one, it emits its events, which never went out. (The commit of an event that
    ///    was applied before emits nothing: its events went out the first time.)
    /// 3. The state is dropped (durably): the generation moves on.
    /// 4. The dead-letter entries of older generations are removed: the replay decides their
    ///    events again (and dead-letters those it still refuses). Until then, no redrive of
    ///    them is delivered: a redriven entry of an older generation is skipped.
    ///
    /// A crash before step 3 leaves the state whole with the cursor at the start: what is
    /// replayed then is found applied and skipped, and the rebuild can be asked again. A
    /// crash before step 4 leaves older entries, which the next start removes. Rebuilds
    /// asked for at once run one after the other.
    pub(crate) async fn rebuild(&self, starts: &[u64]) -> Result<(), EngineError> {
        let keyed = self.keyed()?;
        let _one_at_a_time = self.rebuilds.lock().await;
        self.shared.core().rebuilding = true;
        let result = async {
            self.seek_lanes(starts, true).await?;
            let generation = keyed.generation();
            let entries = self
                .blocking(move |shared| shared.with_dlq(|dlq| dlq.older_than(generation + 1)))
                .await?;
            let current: Vec<DeadLetterEntry> = entries
                .into_iter()
                .filter(|entry| entry.generation == generation)
                .collect();
            keyed.mark_unapplied(&current).await?;
            keyed.rebuild().await?;
            self.blocking(Shared::remove_older_dead_letters).await
        }
        .await;
        self.shared.core().rebuilding = false;
        self.shared.signals.changed(true);
        result
    }

    /// Removes every dead-letter entry not being redriven; returns how many. A stateful
    /// subscription first marks those never applied (see [`Subscription::rebuild`]).
    pub(crate) async fn purge_dead_letters(&self) -> Result<usize, EngineError> {
        let entries = self
            .blocking(|shared| shared.with_dlq(|dlq| dlq.purgeable()))
            .await?;
        if let Some(keyed) = &self.shared.keyed {
            keyed.mark_unapplied(&entries).await?;
        }
        let ids = entries.into_iter().map(|entry| entry.id).collect();
        let purged = self
            .blocking(move |shared| shared.with_dlq(|dlq| dlq.purge(ids)))
            .await?;
        self.shared.signals.wake_readers();
        Ok(purged)
    }

    /// Runs a blocking operation on the shared state on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Shared) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || operation(&shared))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }

    /// A key's state (blocking), when the subscription is stateful and the key has one.
    pub(crate) fn key_state(&self, key: &str) -> Result<Option<StoredKeyState>, EngineError> {
        self.keyed()?.get(key)
    }

    /// Up to `max` keys with state after `after`, and whether more follow. Blocking.
    pub(crate) fn list_state(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<StoredKeyState>, bool), EngineError> {
        self.keyed()?.list(after, max)
    }

    fn keyed(&self) -> Result<&KeyedState, EngineError> {
        self.shared.keyed.as_ref().ok_or_else(|| {
            EngineError::Subscription(SubscriptionError::InvalidCommit {
                detail: format!(
                    "subscription {:?} is not stateful, so it keeps no state; create a subscription with \"stateful\": true",
                    self.shared.name
                ),
            })
        })
    }
}

/// Boot numbers are drawn below this (see `pull.rs`, ack ids).
const BOOT_LIMIT: u32 = 1 << 31;

/// The metric families of recovery figures (a sink's or an endpoint's), by labels `L`.
struct HealthFamilies<'a, L> {
    outages: &'a Family<L, Counter>,
    down: &'a Family<L, FloatGauge>,
    availability: &'a Family<L, FloatGauge>,
    mtbf: &'a Family<L, FloatGauge>,
    mttr: &'a Family<L, FloatGauge>,
    detect: &'a Family<L, FloatGauge>,
}

impl<L: Clone + std::hash::Hash + Eq> HealthFamilies<'_, L> {
    /// Sets the series of `labels` from the figures. The outage counter catches up with the
    /// figures' count, which is the one truth (describe shows it too).
    fn publish(&self, labels: &L, health: &keel_api::subscriptions::SinkHealth) {
        let outages = self.outages.get_or_create(labels);
        outages.inc_by(health.outages.saturating_sub(outages.get()));
        self.down
            .get_or_create(labels)
            .set(health.down_time.as_secs_f64());
        self.availability
            .get_or_create(labels)
            .set(health.availability);
        let optional = [
            (self.mtbf, health.mtbf),
            (self.mttr, health.mttr),
            (
                self.detect,
                health.last_outage.as_ref().map(|o| o.time_to_detect),
            ),
        ];
        for (family, value) in optional {
            if let Some(value) = value {
                family.get_or_create(labels).set(value.as_secs_f64());
            }
        }
    }
}

/// Events a lane may hold pending: the subscription's bound shared across its partitions.
fn lane_pending_max(partitions: usize) -> usize {
    (SUBSCRIPTION_PENDING_MAX / partitions.max(1)).max(LANE_PENDING_MIN)
}

/// Bytes of events a lane may hold pending: the subscription's bound shared across its
/// partitions (plus at most one event each, since a read returns at least one).
fn lane_bytes_max(partitions: usize) -> usize {
    (SUBSCRIPTION_PENDING_BYTES_MAX / partitions.max(1)).max(LANE_PENDING_BYTES_MIN)
}

/// The first checkpoint of a new subscription, its lanes at `starts`.
pub(crate) fn first_checkpoint(spec: &SubscriptionSpec, starts: &[u64]) -> Checkpoint {
    let partitions = starts.len();
    let state = DeliveryState::new(
        spec.ordering,
        spec.max_in_flight as usize,
        lane_pending_max(partitions),
        starts,
    );
    Checkpoint::new(state.checkpoint(), None, false)
}

/// Fires retry timers and ack deadlines when they come due.
async fn run_timers(shared: Arc<Shared>) {
    let mut stopping = shared.signals.stopping();
    loop {
        let (ready, timed_out, next_ms) = {
            let mut core = shared.core();
            let (ready, timed_out) =
                core.delivery
                    .tick(now_ms(), &shared.spec.retry, fastrand::f64());
            (ready, timed_out, core.delivery.next_timer_ms())
        };
        shared.count_attempts("timed_out", timed_out as u64);
        if ready || timed_out > 0 {
            shared.signals.changed(true);
        }
        let sleep_ms = next_ms.map_or(60_000, |next| (next - now_ms()).clamp(1, 60_000));
        let sleep = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms as u64));
        tokio::select! {
            _ = sleep => {}
            _ = shared.signals.timer_woken() => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}
