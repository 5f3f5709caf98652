//! Outages as long as the heartbeat timeout and longer: a Redis stalled, a
//! Redis killed and brought back from its AOF, a replica down while its
//! watchers move to the other. Twenty visitors keep their pages open the
//! whole time (half hold streams that reconnect, half poll, both as the
//! reference BFF does: a page the service could not answer tries again five
//! seconds later, as the BFF's busy page does, and a stream whose replica
//! died is opened again on the other at once); afterwards nobody was
//! released and every position is what it was.

use std::time::Duration;

use tokio_stream::StreamExt;
use waitroom::domain::{Clock, SystemClock};
use waitroom::pb;
use waitroom::testkit::{RedisServer, free_port};

use crate::service::{Service, scratch, within};
use crate::wait::{every, until};

/// The queue's heartbeat timeout in these tests.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a page that failed waits before it tries again while the store
/// is out (the BFF's busy page refreshes every five seconds).
const BUSY_RETRY: Duration = Duration::from_secs(5);
/// How soon a stream cut by its replica's death is opened again on another
/// (the BFF's channel moves to a live pod at once).
const QUICK_RETRY: Duration = Duration::from_millis(500);
const VISITORS: usize = 20;

enum Fault {
    /// Redis stalled (`SIGSTOP`) this long.
    Stall(Duration),
    /// Redis killed, and started again from its AOF this long after.
    RestartFromAof(Duration),
    /// The first replica killed, and started again this long after.
    ReplicaDown(Duration),
}

/// Visitors whose pages stay open: even ones hold a stream, reopened on
/// any end on the replica that is up (alternating), odd ones poll every
/// second. Runs until aborted.
fn keep_pages_open(addrs: Vec<String>, retry: Duration) -> Vec<tokio::task::JoinHandle<()>> {
    (0..VISITORS)
        .map(|i| {
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let user = format!("v{i:02}");
                let mut turn = i;
                loop {
                    turn += 1;
                    let addr = &addrs[turn % addrs.len()];
                    if let Ok(channel) = tonic::transport::Endpoint::from_shared(addr.clone())
                        .unwrap()
                        .connect_timeout(Duration::from_millis(500))
                        .connect()
                        .await
                    {
                        let client = pb::queue_service_client::QueueServiceClient::new(channel);
                        if i % 2 == 0 {
                            watch_until_ended(client, &user).await;
                        } else {
                            poll_until_refused(client, &user).await;
                        }
                    }
                    // The page's wait before it tries again.
                    tokio::time::sleep(retry).await;
                }
            })
        })
        .collect()
}

/// A page holding a stream, until the stream ends.
async fn watch_until_ended(
    mut client: pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>,
    user: &str,
) {
    let request = pb::WatchRankRequest {
        queue_id: "sale".into(),
        user_id: user.to_owned(),
        receipt: String::new(),
    };
    if let Ok(stream) = client.watch_rank(request).await {
        let mut stream = stream.into_inner();
        while let Some(Ok(_)) = stream.next().await {}
    }
}

/// A page polling every second, until a poll is refused.
async fn poll_until_refused(
    mut client: pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>,
    user: &str,
) {
    let mut beat = every(Duration::from_secs(1));
    loop {
        beat.tick().await;
        let request = within(
            pb::GetRankRequest {
                queue_id: "sale".into(),
                user_id: user.to_owned(),
                receipt: String::new(),
            },
            Duration::from_secs(1),
        );
        if client.get_rank(request).await.is_err() {
            return;
        }
    }
}

/// Waits for a pass of the reaper (any replica's) that ran at `at_ms` or
/// later: each pass records when it ran in the queue's configuration.
async fn until_reaped_at(redis_url: &str, prefix: &str, at_ms: u64) {
    let client = redis::Client::open(redis_url).unwrap();
    let key = format!("{prefix}:{{sale}}:config");
    until("a pass of the reaper", HEARTBEAT * 4, || {
        let heard: redis::RedisResult<Option<u64>> =
            client.get_connection().and_then(|mut conn| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("heard_ms")
                    .query(&mut conn)
            });
        std::future::ready(match heard {
            Ok(Some(heard)) if heard >= at_ms => Ok(()),
            other => Err(format!(
                "the last pass ran at {other:?}, not yet at {at_ms}"
            )),
        })
    })
    .await;
}

async fn positions(service: &Service) -> Vec<(String, u64)> {
    let mut client = service.client();
    let mut all = Vec::new();
    for i in 0..VISITORS {
        let user = format!("v{i:02}");
        let place = client
            .get_rank(pb::GetRankRequest {
                queue_id: "sale".into(),
                user_id: user.clone(),
                receipt: String::new(),
            })
            .await
            .unwrap_or_else(|status| panic!("{user} lost the place: {status:?}"))
            .into_inner()
            .place
            .unwrap();
        all.push((user, place.position));
    }
    all
}

/// `lead_ms`: how long the pages run before the fault. Each test takes
/// another, so the faults fall at different moments of the presence writes
/// (every third of the timeout) and of the reaper's passes (every second).
async fn nobody_whose_page_stayed_open_is_released(fault: Fault, lead_ms: u64, name: &str) {
    let _serial = crate::one_at_a_time().await;
    let dir = scratch(name);
    let port = free_port().unwrap();
    let aof = dir.join(format!("aof-{port}"));
    std::fs::create_dir_all(&aof).unwrap();
    let mut redis = RedisServer::start_with(
        port,
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            aof.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut one = Service::start(&redis.url(), name, &dir, &[]).await;
    let two = Service::start(&redis.url(), name, &dir, &[]).await;
    one.create_queue(pb::Queue {
        id: "sale".into(),
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: HEARTBEAT.as_secs() as i64,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await;
    let mut client = one.client();
    for i in 0..VISITORS {
        client
            .enqueue(pb::EnqueueRequest {
                queue_id: "sale".into(),
                user_id: format!("v{i:02}"),
                receipt: String::new(),
            })
            .await
            .unwrap();
    }
    let before = positions(&one).await;
    let addrs = vec![
        format!("http://{}", one.addr),
        format!("http://{}", two.addr),
    ];
    let retry = match fault {
        Fault::ReplicaDown(_) => QUICK_RETRY,
        Fault::Stall(_) | Fault::RestartFromAof(_) => BUSY_RETRY,
    };
    let pages = keep_pages_open(addrs, retry);
    tokio::time::sleep(Duration::from_millis(lead_ms)).await;

    let mut one_again = None;
    let length = match fault {
        Fault::Stall(length) => {
            redis.pause().unwrap();
            length
        }
        Fault::RestartFromAof(length) => {
            redis.stop();
            length
        }
        Fault::ReplicaDown(length) => {
            one.kill();
            length
        }
    };
    // The outage.
    tokio::time::sleep(length).await;
    match fault {
        Fault::Stall(_) => redis.resume().unwrap(),
        Fault::RestartFromAof(_) => redis.restart().unwrap(),
        // Back on a port of its own: the pages stay on the other.
        Fault::ReplicaDown(_) => {
            one_again = Some(Service::start(&redis.url(), name, &dir, &[]).await);
        }
    }
    // Until the reaper has had every chance to release anyone it would: a
    // pass two timeouts after the store came back (a whole timeout and its
    // quarter after the first pass back, and a pass more).
    until_reaped_at(
        &redis.url(),
        name,
        SystemClock.now_ms() + HEARTBEAT.as_millis() as u64 * 2,
    )
    .await;
    // Read while the pages are still open: a page closed is silent, and
    // would be released a timeout later, rightly.
    let after = positions(&two).await;
    let stats = two.stats("sale").await;
    assert_eq!(stats.abandoned_total, 0, "places were released");
    for page in &pages {
        page.abort();
    }
    assert_eq!(after, before, "positions moved");
    drop(one_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stalled_for_1_2_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::Stall(HEARTBEAT * 6 / 5), 2000, "stall-1-2")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stalled_for_2_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::Stall(HEARTBEAT * 2), 2600, "stall-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stalled_for_3_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::Stall(HEARTBEAT * 3), 3300, "stall-3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_from_its_aof_after_3_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::RestartFromAof(HEARTBEAT * 3), 2900, "aof-3")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_for_2_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::ReplicaDown(HEARTBEAT * 2), 2300, "replica-2")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_for_3_heartbeats_releases_nobody() {
    nobody_whose_page_stayed_open_is_released(Fault::ReplicaDown(HEARTBEAT * 3), 3600, "replica-3")
        .await;
}
