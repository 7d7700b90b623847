//! The NATS harness against a real three-server JetStream cluster on loopback.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_testkit::nats::NatsCluster;

/// How long a cluster may take to become whole again (see [`wait_whole`]): after a restart,
/// or after the meta leader died and the others elect a new one (a few seconds).
const WHOLE_WAIT: Duration = Duration::from_secs(15);

/// How long the survivors are watched after a follower died.
const FOLLOWER_LOSS_WATCH: Duration = Duration::from_secs(2);

/// Pause between two looks at the cluster.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Goal: the harness runs a real JetStream cluster whose servers a test can kill and restart,
/// and the cluster behaves as cluster-mode tests will assume.
///
/// Invariant: with a majority of the three servers alive, the live servers agree on a
/// JetStream meta leader that is one of them, and each is healthy (`/healthz` 200: current
/// with that leader). Losing a follower does not disturb the others at all; losing the leader
/// makes them unhealthy only while they elect a new one. A server restarted on its old ports
/// and store rejoins: it routes to every other server, is healthy and names the same leader.
///
/// Method: start three servers; kill -9 a follower and watch the other two stay healthy
/// under the same leader; restart it and wait for the cluster to be whole. Then kill -9 the
/// leader, wait for the other two to elect one of themselves, restart it, and wait again.
#[tokio::test]
async fn cluster_survives_losing_any_one_server_and_the_server_rejoins() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3).await;
    eprintln!("3 servers ready in {:?}", started.elapsed());
    let all = [0, 1, 2];
    let leader = wait_whole(&cluster, &all).await;

    let follower = (0..3).find(|&i| cluster.name(i) != leader).unwrap();
    cluster.kill9(follower);
    assert!(!cluster.is_running(follower));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != follower).collect();
    let watch_end = Instant::now() + FOLLOWER_LOSS_WATCH;
    while Instant::now() < watch_end {
        for &i in &survivors {
            assert!(
                cluster.is_healthy(i).await,
                "{} unhealthy after follower {} died; its log:\n{}",
                cluster.name(i),
                cluster.name(follower),
                cluster.log_tail(i)
            );
            assert_eq!(cluster.meta_leader(i).await.as_deref(), Some(&*leader));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    cluster.restart(follower).await;
    assert_eq!(wait_whole(&cluster, &all).await, leader);

    let leader_index = (0..3).find(|&i| cluster.name(i) == leader).unwrap();
    cluster.kill9(leader_index);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader_index).collect();
    let new_leader = wait_whole(&cluster, &survivors).await;
    assert_ne!(new_leader, leader);
    cluster.restart(leader_index).await;
    assert_eq!(wait_whole(&cluster, &all).await, new_leader);
    eprintln!("whole test took {:?}", started.elapsed());
}

/// Waits until the `live` servers are a whole cluster: each healthy, routing to every other
/// live server, and all naming one live server as the meta leader; returns its name.
async fn wait_whole(cluster: &NatsCluster, live: &[usize]) -> String {
    let deadline = Instant::now() + WHOLE_WAIT;
    loop {
        let state = cluster_state(cluster, live).await;
        if let Some(leader) = whole_leader(cluster, live, &state) {
            return leader;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = live
                .iter()
                .map(|&i| format!("{}:\n{}", cluster.name(i), cluster.log_tail(i)))
                .collect();
            panic!(
                "servers {live:?} not a whole cluster after {WHOLE_WAIT:?}: {state:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// What one live server reports: healthy, its meta leader, the servers it routes to.
type ServerState = (bool, Option<String>, BTreeSet<String>);

async fn cluster_state(cluster: &NatsCluster, live: &[usize]) -> Vec<ServerState> {
    let mut state = Vec::new();
    for &i in live {
        state.push((
            cluster.is_healthy(i).await,
            cluster.meta_leader(i).await,
            cluster.route_names(i).await,
        ));
    }
    state
}

/// The leader's name if `state` (of the `live` servers) is a whole cluster.
fn whole_leader(cluster: &NatsCluster, live: &[usize], state: &[ServerState]) -> Option<String> {
    let live_names: BTreeSet<String> = live.iter().map(|&i| cluster.name(i).to_owned()).collect();
    let leader = state.first()?.1.clone()?;
    let whole = live_names.contains(&leader)
        && live
            .iter()
            .zip(state)
            .all(|(&i, (healthy, server_leader, routes))| {
                let mut peers = live_names.clone();
                peers.remove(cluster.name(i));
                *healthy && server_leader.as_ref() == Some(&leader) && peers.is_subset(routes)
            });
    whole.then_some(leader)
}

/// Goal: pause and resume stall and revive a server without killing it. Method: a single
/// JetStream server (no cluster block) is paused: it is still running but its monitoring
/// answers nothing; resumed, it is healthy again.
#[tokio::test]
async fn paused_server_answers_nothing_until_resumed() {
    let cluster = NatsCluster::start(1).await;
    assert!(cluster.is_healthy(0).await);
    assert_eq!(
        cluster.meta_leader(0).await,
        None,
        "one server has no meta group"
    );
    cluster.pause(0);
    assert!(cluster.is_running(0));
    assert!(!cluster.is_healthy(0).await);
    cluster.resume(0);
    cluster.wait_ready(0).await;
}
