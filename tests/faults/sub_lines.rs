//! Admission over sub-lines from two replicas at once, through a Redis
//! stalled at several moments and for several durations (shorter and
//! longer than the store's timeout): the head's journal admits everyone
//! once, batch after batch in ticket order, and every request retried
//! under its id is answered what it did.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use waitroom::domain::{QueueConfig, QueueId, RequestId, UserId};
use waitroom::store::{QueueStore, RedisOptions, RedisStore};
use waitroom::testkit::RedisServer;

const T0: u64 = 1_800_000_000_000;

async fn replica(redis: &RedisServer, prefix: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(&RedisOptions {
            url: redis.url(),
            password: None,
            cluster: false,
            prefix: prefix.to_owned(),
            timeout: TIMEOUT,
            sentinel_master: None,
            sentinel_password: None,
        })
        .await
        .unwrap()
        .with_sub_lines(),
    )
}

/// The store's timeout: stalls are tried shorter and longer than it.
const TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admitters_over_sub_lines_through_a_stall_admit_everyone_once_in_order() {
    let _one = crate::one_at_a_time().await;
    // (batches answered before the stall, how long it lasts)
    for (after, stall) in [(5, 1_500), (40, 800), (75, 300)] {
        admit_through_a_stall(after, Duration::from_millis(stall)).await;
    }
}

async fn admit_through_a_stall(after_batches: usize, stall: Duration) {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let queue = QueueId::parse("sale").unwrap();
    let users = 600 * crate::scale();
    let replicas = [replica(&redis, "f").await, replica(&redis, "f").await];
    let mut config = QueueConfig::new(queue.clone()).created(T0);
    config.shards = 3;
    replicas[0].create_queue(&config).await.unwrap();
    let crowd: Vec<UserId> = (0..users)
        .map(|n| UserId::parse(&format!("v{n}")).unwrap())
        .collect();
    let mut tickets = HashMap::new();
    for chunk in crowd.chunks(50) {
        for (user, place) in chunk
            .iter()
            .zip(replicas[0].enqueue_many(&queue, chunk, T0).await.unwrap())
        {
            tickets.insert(user.clone(), place.unwrap().ticket);
        }
    }
    let now = T0 + 1_000;
    // Each replica admits batches of a few, each under its own request
    // id, retrying a request that got no answer until it gets one.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut admitters = Vec::new();
    for (r, store) in replicas.iter().enumerate() {
        let (store, queue, answered) = (Arc::clone(store), queue.clone(), Arc::clone(&answered));
        admitters.push(tokio::spawn(async move {
            let mut answers: Vec<Vec<(UserId, u64)>> = Vec::new();
            let mut failures = 0;
            for batch in 0.. {
                let request = RequestId::parse(&format!("r{r}-b{batch}")).unwrap();
                let n = 1 + (batch % 7) as u32;
                let mut tries = 0;
                let admitted = loop {
                    match store.admit(&queue, n, Some(&request), now).await {
                        Ok(admitted) => break admitted,
                        Err(error) => {
                            failures += 1;
                            tries += 1;
                            assert!(tries < 100, "{request:?} never answered: {error}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                if admitted.is_empty() {
                    return (answers, failures);
                }
                answered.fetch_add(1, Ordering::Relaxed);
                answers.push(
                    admitted
                        .into_iter()
                        .map(|a| (a.user, a.admission.ticket))
                        .collect(),
                );
            }
            (answers, failures)
        }));
    }
    // Redis stalls once that many batches are answered.
    let waiting = std::time::Instant::now();
    while answered.load(Ordering::Relaxed) < after_batches {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "{after_batches} batches never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    redis.pause().unwrap();
    tokio::time::sleep(stall).await;
    redis.resume().unwrap();
    let mut batches = Vec::new();
    let mut failures = 0;
    for admitter in admitters {
        let (answers, failed) = admitter.await.unwrap();
        batches.extend(answers);
        failures += failed;
    }
    let at = format!("a stall of {stall:?} after {after_batches} batches");
    if stall > TIMEOUT {
        assert!(failures > 0, "{at} made some calls fail");
    }
    // Everyone admitted once, with the ticket they were given.
    let mut admitted: BTreeMap<u64, UserId> = BTreeMap::new();
    for (user, ticket) in batches.iter().flatten() {
        assert_eq!(tickets.get(user), Some(ticket), "{user:?}");
        assert!(
            admitted.insert(*ticket, user.clone()).is_none(),
            "{user:?} admitted twice, {at}"
        );
    }
    assert_eq!(admitted.len(), users, "everyone admitted, {at}");
    // Batch after batch in ticket order: no two batches interleave.
    batches.sort_by_key(|batch| batch.iter().map(|(_, t)| *t).min());
    for pair in batches.windows(2) {
        let highest = pair[0].iter().map(|(_, t)| *t).max();
        let lowest = pair[1].iter().map(|(_, t)| *t).min();
        assert!(highest < lowest, "{pair:?}, {at}");
    }
}
