//! Admission over sub-lines from two replicas at once, through a Redis
//! stalled at several moments and for several durations (shorter and
//! longer than the store's timeout): the head's journal admits everyone
//! once, batch after batch in ticket order, and every request retried
//! under its id is answered what it did. And a primary killed on a
//! Cluster under joins and admissions: a sub-line's stops only that
//! sub-line's joins until its replica takes over, the head's pauses every
//! join, and admission waits for either; no ticket is given twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use waitroom::domain::shards::sub_line_of;
use waitroom::domain::{
    PlaceClaim, PlaceState, QueueConfig, QueueId, RequestId, Restoration, UserId,
};
use waitroom::store::{QueueStore, RedisOptions, RedisStore};
use waitroom::testkit::{RedisCluster, RedisServer};

use crate::failover::{cmd, replica_link_up};
use crate::wait::wait_until;

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
                let patience = (100, Duration::from_millis(50));
                let (admitted, refused) =
                    admit_answered(&store, &queue, n, &request, || now, patience).await;
                failures += refused;
                if admitted.is_empty() {
                    return (answers, failures);
                }
                answered.fetch_add(1, Ordering::Relaxed);
                answers.push(admitted);
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

/// Admits up to `n` under `request`, asking again under the same id until
/// answered (at most `patience.0` times, `patience.1` apart): each user
/// admitted with their ticket, and how many times it was refused.
async fn admit_answered(
    store: &RedisStore,
    queue: &QueueId,
    n: u32,
    request: &RequestId,
    now: impl Fn() -> u64,
    patience: (usize, Duration),
) -> (Vec<(UserId, u64)>, usize) {
    let mut refused = 0;
    loop {
        match store.admit(queue, n, Some(request), now()).await {
            Ok(admitted) => {
                let admitted = admitted.into_iter().map(|a| (a.user, a.admission.ticket));
                return (admitted.collect(), refused);
            }
            Err(error) => {
                refused += 1;
                assert!(refused < patience.0, "{request:?} never answered: {error}");
                tokio::time::sleep(patience.1).await;
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Each sub-line's config key of the queue `sale` over three sub-lines,
/// by sub-line, as the masters hold them.
fn sub_line_keys(cluster: &RedisCluster) -> Vec<String> {
    let mut keys = BTreeMap::new();
    for node in &cluster.nodes {
        let redis::Value::Array(found) = cmd(node, &["KEYS", "k:{sale/3~*}:config"]) else {
            continue;
        };
        for key in found {
            if let redis::Value::BulkString(key) = key {
                let key = String::from_utf8_lossy(&key).into_owned();
                let sub_line: usize = key
                    .split_once('~')
                    .and_then(|(_, rest)| rest.split(['.', '}']).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap();
                keys.insert(sub_line, key);
            }
        }
    }
    keys.into_values().collect()
}

/// What one join was answered, and when.
struct Join {
    sub_line: usize,
    ticket: Option<u64>,
    error: Option<String>,
    /// When it was asked, and when answered.
    sent: std::time::Instant,
    at: std::time::Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_s_primary_killed_stops_only_that_sub_line_s_joins() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::SubLine).await;
}

/// The same under a crowd: with more joins waiting than a call takes,
/// the rounds' reads ride on the sub-lines' join calls, the victim's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_s_primary_killed_under_a_crowd_stops_only_that_sub_line_s_joins() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::SubLineInACrowd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_s_primary_killed_pauses_joins_and_gives_no_ticket_twice() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::Head).await;
}

/// The head's replica cut off a second before its primary is killed, so
/// the replica that takes over lacks the leases of that second, whose
/// blocks the other sub-lines hold and gave from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_failed_over_to_a_replica_behind_gives_no_ticket_twice() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::HeadBehind(Duration::from_secs(1))).await;
}

/// The same with the replica cut off for three seconds: more leases lost,
/// and blocks leased and spent meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_failed_over_to_a_replica_three_seconds_behind_gives_no_ticket_twice() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::HeadBehind(Duration::from_secs(3))).await;
}

/// A sub-line's replica cut off a second before its primary is killed,
/// while admissions run: the replica that takes over lacks that second's
/// pops, and has their users waiting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_failed_over_to_a_replica_behind_admits_nobody_twice() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::SubLineBehind(Duration::from_secs(1))).await;
}

/// The same with the replica cut off for 0.3 s (a few admissions' pops
/// lost) and for three seconds (thousands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_failed_over_to_a_replica_briefly_or_long_behind_admits_nobody_twice() {
    let _one = crate::one_at_a_time().await;
    a_primary_killed(Victim::SubLineBehind(Duration::from_millis(300))).await;
    a_primary_killed(Victim::SubLineBehind(Duration::from_secs(3))).await;
}

/// Whose primary is killed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// A sub-line's that does not hold the head.
    SubLine,
    /// The same, under a crowd of joiners.
    SubLineInACrowd,
    /// A sub-line's, with a replica cut off from it that long before.
    SubLineBehind(Duration),
    /// The head's, with a replica that has every write.
    Head,
    /// The head's, with a replica cut off from it that long before.
    HeadBehind(Duration),
}

/// Kills the primary of a sub-line that does not hold the head, or with
/// `head` the head's (and the sub-line it holds), under joins on every
/// sub-line and an admitter, and checks what everyone was answered.
async fn a_primary_killed(victim_kind: Victim) {
    let killing_the_head = matches!(victim_kind, Victim::Head | Victim::HeadBehind(_));
    let behind = match victim_kind {
        Victim::SubLineBehind(cut_off) | Victim::HeadBehind(cut_off) => Some(cut_off),
        Victim::SubLine | Victim::SubLineInACrowd | Victim::Head => None,
    };
    let crowd = victim_kind == Victim::SubLineInACrowd;
    let mut cluster = RedisCluster::start_with_replicas(1).unwrap_or_else(|e| panic!("{e}"));
    let (store, queue, _) = sale_over_three_sub_lines(&cluster).await;
    // The victim: a sub-line whose primary does not also hold the head,
    // or the one that does.
    let (victim, master, replica) = sub_line_with_replica(&cluster, killing_the_head).await;
    let node_on = |port: u16| move |node: &&RedisServer| node.port == port;

    let mut joins = line_of(&store, &queue, "early", LINE).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joiners = spawn_joiners(&store, &queue, &stop);
    // The crowd, until a second after the kill: its reads ride on the
    // join calls, the victim's too, and its joins are few enough to check.
    let crowd_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let crowders = match crowd {
        true => spawn_crowd(&store, &queue, &crowd_stop, "c", CROWD),
        false => Vec::new(),
    };
    // A pop lost with a primary would admit its users again (docs/design.md,
    // "Failover"): the admitter holds off while the head's replica is cut
    // off, so the replica behind tests the leases alone.
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admitter = spawn_admitter(&store, &queue, &stop, &hold);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // From this moment the victim's writes may be lost with its primary.
    let mut unreplicated_from = std::time::Instant::now() - Duration::from_secs(1);
    if let Some(cut_off) = behind {
        if matches!(victim_kind, Victim::HeadBehind(_)) {
            hold.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Stalled, the replica cannot connect again; cut off, it gets
        // nothing written from now on.
        let replica_node = cluster.nodes.iter().find(node_on(replica)).unwrap();
        replica_node.pause().unwrap();
        let primary = cluster.nodes.iter().find(node_on(master)).unwrap();
        cmd(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
        unreplicated_from = std::time::Instant::now();
        tokio::time::sleep(cut_off).await;
    }
    let node = cluster
        .nodes
        .iter_mut()
        .find(|node| node.port == master)
        .unwrap();
    node.stop();
    let killed = std::time::Instant::now();
    if crowd {
        tokio::time::sleep(Duration::from_secs(1)).await;
        crowd_stop.store(true, Ordering::Relaxed);
    }
    let replica_node = cluster.nodes.iter().find(node_on(replica)).unwrap();
    if behind.is_some() {
        replica_node.resume().unwrap();
        // Nothing is admitted until the head is back.
        hold.store(false, Ordering::Relaxed);
    }
    wait_until("the replica took over", Duration::from_secs(30), || {
        std::future::ready(matches!(cmd(replica_node, &["ROLE"]),
            redis::Value::Array(role) if matches!(role.first(),
                Some(redis::Value::BulkString(name)) if name == b"master")))
    })
    .await;
    let promoted = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for joiner in joiners.into_iter().chain(crowders) {
        joins.extend(joiner.await.unwrap());
    }
    let (batches, answered_at, failures) = admitter.await.unwrap();
    if crowd {
        let rides = store.rides(&queue);
        eprintln!(
            "{} joins; {rides} parts of reads rode on join calls",
            joins.len()
        );
        assert!(rides > 0, "no read rode on a join call");
    }
    let before_the_kill: usize = batches
        .iter()
        .zip(&answered_at)
        .filter(|(_, at)| **at < killed)
        .map(|(batch, _)| batch.len())
        .sum();
    eprintln!(
        "{:.0} admitted a second before the kill",
        before_the_kill as f64 / (killed - started).as_secs_f64()
    );
    // The victim's replica, cut off, lacks the pops of the admissions
    // answered meanwhile.
    if matches!(victim_kind, Victim::SubLineBehind(_)) {
        let popped = batches
            .iter()
            .zip(&answered_at)
            .filter(|(_, at)| **at > unreplicated_from && **at < killed)
            .flat_map(|(batch, _)| batch)
            .filter(|(user, _)| sub_line_of(user.as_str(), 3) as usize == victim)
            .count();
        eprintln!("{popped} of the victim's users admitted while its replica was cut off");
        assert!(
            popped > 10,
            "only {popped} admitted while the replica was cut off"
        );
    }

    // A join of the victim's sub-line made since its replica last had
    // every write may be lost with its primary (asynchronous replication),
    // and its ticket given again.
    let unreplicated =
        |join: &Join| join.sub_line == victim && join.sent < killed && join.at > unreplicated_from;

    // No ticket given twice, but a lost join's.
    let mut holders: BTreeMap<u64, Vec<&Join>> = BTreeMap::new();
    for (_, join) in &joins {
        if let Some(ticket) = join.ticket {
            holders.entry(ticket).or_default().push(join);
        }
    }
    let twice: Vec<String> = holders
        .iter()
        .filter(|(_, given)| given.iter().filter(|j| !unreplicated(j)).count() > 1)
        .map(|(ticket, given)| {
            let to: Vec<String> = given
                .iter()
                .map(|j| match j.at.checked_duration_since(killed) {
                    Some(after) => format!("sub-line {} {after:?} after the kill", j.sub_line),
                    None => format!("sub-line {} {:?} before", j.sub_line, killed - j.at),
                })
                .collect();
            format!("{ticket}: {to:?}")
        })
        .collect();
    assert!(
        twice.is_empty(),
        "tickets given twice (victim {victim}): {twice:?}"
    );

    // The other sub-lines gave tickets from blocks leased while the head's
    // replica was cut off, which the replica that took over never had.
    if matches!(victim_kind, Victim::HeadBehind(_)) {
        let cut_off = joins
            .iter()
            .filter(|(_, j)| j.sub_line != victim && j.ticket.is_some())
            .filter(|(_, j)| j.at > unreplicated_from && j.at < killed)
            .count();
        eprintln!("{cut_off} joins on the other sub-lines while the head's replica was cut off");
        assert!(
            cut_off > 50,
            "only {cut_off} joins while the replica was cut off"
        );
    }

    // Without the head every sub-line's joins pause (no block is leased)
    // until its replica takes over; then they are all answered again.
    if killing_the_head {
        let refused = joins.iter().filter(|(_, j)| j.ticket.is_none()).count();
        eprintln!(
            "failover after {:?}; {refused} joins refused meanwhile",
            promoted - killed
        );
        assert!(refused > 0, "joins paused without the head");
        let after: Vec<bool> = joins
            .iter()
            .filter(|(_, j)| j.at > promoted + Duration::from_secs(2))
            .map(|(_, j)| j.ticket.is_some())
            .collect();
        assert!(after.len() > 100 && after.iter().all(|ok| *ok), "{after:?}");
    }

    // The other sub-lines' joins never failed; the victim's failed while
    // its primary was gone, and were answered again once its replica took
    // over.
    if !killing_the_head {
        let live: Vec<&Join> = joins
            .iter()
            .map(|(_, join)| join)
            .filter(|join| join.sub_line != victim)
            .collect();
        let refused: Vec<Duration> = live
            .iter()
            .filter(|join| join.ticket.is_none())
            .map(|join| join.at.saturating_duration_since(killed))
            .collect();
        let during = live
            .iter()
            .filter(|join| join.at > killed && join.at < promoted)
            .count();
        eprintln!(
            "failover after {:?}; {during} joins on the live sub-lines meanwhile",
            promoted - killed
        );
        assert!(
            during > 100,
            "only {during} joins on the live sub-lines during the failover"
        );
        assert!(
            refused.is_empty(),
            "{} joins on live sub-lines refused, {:?} to {:?} after the kill: {:?}",
            refused.len(),
            refused.iter().min(),
            refused.iter().max(),
            live.iter().find_map(|join| join.error.as_ref())
        );
    }
    let of_victim = |after: std::time::Instant| {
        joins
            .iter()
            .filter(|(_, j)| j.sub_line == victim && j.at > after)
            .map(|(_, j)| j.ticket.is_some())
            .collect::<Vec<bool>>()
    };
    assert!(
        of_victim(killed).iter().any(|ok| !ok),
        "the victim's joins failed while its primary was gone"
    );
    let after = of_victim(promoted + Duration::from_secs(2));
    assert!(!after.is_empty() && after.iter().all(|ok| *ok), "{after:?}");

    // With every sub-line answering again, positions are exact: no last
    // read stands in any more. A line the admitter nearly emptied (it
    // runs at 3,000 a second on a quiet machine) gets late arrivals first,
    // so there are positions to check.
    joins.extend(line_of(&store, &queue, "late", 600).await);
    let everyone: Vec<UserId> = joins.iter().map(|(user, _)| user.clone()).collect();
    let mut waiting = Vec::new();
    for chunk in everyone.chunks(500) {
        let places = store.places(&queue, chunk, false, now_ms()).await.unwrap();
        for place in places.into_iter().flatten() {
            if let PlaceState::Waiting { position } = place.state {
                waiting.push((place.ticket, position));
            }
        }
    }
    waiting.sort_unstable();
    assert!(waiting.len() > 100, "only {} still waiting", waiting.len());
    for (rank, (ticket, position)) in waiting.iter().enumerate() {
        assert_eq!(
            *position,
            rank as u64 + 1,
            "ticket {ticket} after the failover"
        );
    }

    // Everyone acknowledged is admitted once, in ticket order, but for
    // the victim's joins acknowledged in the last moment before the kill
    // (asynchronous replication).
    let mut admitted: BTreeMap<u64, UserId> = BTreeMap::new();
    let mut last = 0;
    let during: usize = batches.iter().map(Vec::len).sum();
    eprintln!("{during} admitted while joins ran, {failures} admission calls refused");
    assert!(failures > 0, "admission waited for the lost sub-line");
    assert!(during > 200, "only {during} admitted while joins ran");
    for (user, ticket) in batches.into_iter().flatten() {
        assert!(ticket > last, "admitted out of ticket order");
        last = ticket;
        assert!(
            admitted.insert(ticket, user.clone()).is_none(),
            "{user:?} admitted twice"
        );
    }
    for (user, ticket) in drain(&store, &queue).await.into_iter().flatten() {
        assert!(ticket > last, "admitted out of ticket order");
        last = ticket;
        assert!(
            admitted.insert(ticket, user.clone()).is_none(),
            "{user:?} admitted twice"
        );
    }
    let mut lost = 0;
    for (user, join) in &joins {
        let Some(ticket) = join.ticket else { continue };
        if admitted.get(&ticket) == Some(user) {
            continue;
        }
        assert!(
            unreplicated(join),
            "{user:?} (ticket {ticket}, sub-line {}, {:?} after the kill, victim {victim}) \
             was acknowledged and lost; admitted with that ticket: {:?}",
            join.sub_line,
            join.at.saturating_duration_since(killed),
            admitted.get(&ticket)
        );
        lost += 1;
    }
    // Only those who asked to join are admitted (a join refused for want of
    // an answer may still have been made).
    let asked: std::collections::HashSet<&UserId> = joins.iter().map(|(user, _)| user).collect();
    for user in admitted.values() {
        assert!(asked.contains(user), "{user:?} admitted without asking");
    }
    eprintln!(
        "{} admitted, {lost} acknowledged joins lost with the primary",
        admitted.len()
    );
}

/// A sub-line's Redis (a Cluster master with no replica) killed and started
/// again empty under joins and admissions: the sub-line is made again from
/// its head at its next call, its users join again, the other sub-lines
/// never stop, and nobody is admitted twice or out of ticket order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_s_redis_restarted_empty_is_made_again_while_the_others_serve() {
    let _one = crate::one_at_a_time().await;
    a_sub_line_restarted_empty(Duration::from_secs(2)).await;
}

/// The same at other moments: half a second into the joins and admissions
/// (the first admissions under way), and after three seconds (thousands
/// admitted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_s_redis_restarted_empty_early_or_late_is_made_again() {
    let _one = crate::one_at_a_time().await;
    a_sub_line_restarted_empty(Duration::from_millis(500)).await;
    a_sub_line_restarted_empty(Duration::from_secs(3)).await;
}

/// Restarts a sub-line's Redis empty `after` joins and admissions began.
async fn a_sub_line_restarted_empty(after: Duration) {
    let mut cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let (store, queue, config) = sale_over_three_sub_lines(&cluster).await;
    let head = cluster.master_of("k:{sale}:config").unwrap();
    let keys = sub_line_keys(&cluster);
    let (victim, master) = keys
        .iter()
        .enumerate()
        .find_map(|(sub_line, key)| {
            let master = cluster.master_of(key).unwrap();
            (master != head).then_some((sub_line, master))
        })
        .expect("the sub-lines spread over the masters");

    let mut joins = line_of(&store, &queue, "early", LINE).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joiners = spawn_joiners(&store, &queue, &stop);
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admitter = spawn_admitter(&store, &queue, &stop, &hold);
    tokio::time::sleep(after).await;
    let node = cluster
        .nodes
        .iter_mut()
        .find(|node| node.port == master)
        .unwrap();
    let restarted_from = std::time::Instant::now();
    node.restart().unwrap();
    let restarted = std::time::Instant::now();
    // A Cluster master started again refuses calls (CLUSTERDOWN) for its
    // first two seconds, giving the cluster time to reconfigure it.
    let back = restarted + Duration::from_secs(3);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for joiner in joiners {
        joins.extend(joiner.await.unwrap());
    }
    let (batches, _, _) = admitter.await.unwrap();

    // The victim's users whose places the restart lost come back with
    // their receipts (as the service would bring them: the ticket, the
    // queue's epoch, when it was issued).
    let admitted_before: std::collections::HashSet<&UserId> =
        batches.iter().flatten().map(|(user, _)| user).collect();
    let mut given_back = 0;
    for (user, join) in &joins {
        let Some(ticket) = join.ticket else { continue };
        if join.sub_line != victim || join.sent > restarted || admitted_before.contains(user) {
            continue;
        }
        let claim = PlaceClaim {
            epoch_ms: config.created_at_ms,
            ticket,
            head: 0,
            top: 0,
            issued_ms: now_ms() - join.at.elapsed().as_millis() as u64,
        };
        match store.restore(&queue, user, &claim, now_ms()).await.unwrap() {
            Restoration::Restored(place) => {
                assert_eq!(place.ticket, ticket);
                given_back += 1;
            }
            // Joined in the restart's last moment, on the restarted Redis.
            Restoration::Holds => {}
            other => panic!("{user:?}'s receipt for ticket {ticket}: {other:?}"),
        }
    }
    eprintln!("{given_back} places given back from receipts");
    assert!(given_back > 50, "only {given_back} places given back");

    // The other sub-lines never stopped.
    let refused: Vec<&Join> = joins
        .iter()
        .map(|(_, join)| join)
        .filter(|join| join.sub_line != victim && join.ticket.is_none())
        .collect();
    assert!(
        refused.is_empty(),
        "{} joins on the other sub-lines refused: {:?}",
        refused.len(),
        refused.first().and_then(|join| join.error.as_ref())
    );
    // The victim's joins are answered again once it is back.
    let after: Vec<bool> = joins
        .iter()
        .filter(|(_, j)| j.sub_line == victim && j.sent > back)
        .map(|(_, j)| j.ticket.is_some())
        .collect();
    eprintln!(
        "restarted in {:?}; {} of the victim's joins after it",
        restarted - restarted_from,
        after.len()
    );
    let errors: Vec<&String> = joins
        .iter()
        .filter(|(_, j)| j.sub_line == victim && j.sent > back)
        .filter_map(|(_, j)| j.error.as_ref())
        .collect();
    assert!(
        after.len() > 50 && errors.is_empty(),
        "{} of {} refused: {:?}",
        errors.len(),
        after.len(),
        errors.iter().collect::<std::collections::BTreeSet<_>>()
    );
    no_ticket_twice(&joins);
    // Admission in ticket order, nobody twice; then everyone acknowledged
    // is admitted once, but the victim's who joined before its Redis lost
    // them. In ticket order while joins ran, and again in the drain: the
    // places given back stand below tickets admitted before they came back.
    let admitted = admitted_in_order([batches, drain(&store, &queue).await]);
    for (user, join) in &joins {
        let Some(ticket) = join.ticket else { continue };
        if admitted.get(&ticket) == Some(user) {
            continue;
        }
        panic!(
            "{user:?} (ticket {ticket}, sub-line {}) was acknowledged and lost",
            join.sub_line
        );
    }
    eprintln!("{} admitted, none lost", admitted.len());
}

/// The head's Redis (a Cluster master of its own, no replica) killed and
/// started again empty under joins and admissions, while the sub-lines'
/// masters stand: the queue's declaration re-makes it, as the service does
/// every second, and the head is made again from its sub-lines. Nobody's
/// place is lost and nobody needs a receipt: everyone acknowledged is
/// admitted once, in ticket order, no ticket is given twice, and every
/// sub-line's joins go on once the head is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_s_redis_restarted_empty_is_made_again_from_its_sub_lines() {
    let _one = crate::one_at_a_time().await;
    the_head_restarted_empty(Duration::from_secs(2), Remaking::Declared).await;
}

/// The same half a second into the joins and admissions, made again as a
/// queue nobody declared is (its sub-lines found by the store alone), and
/// after three seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_s_redis_restarted_empty_early_or_late_is_made_again_from_its_sub_lines() {
    let _one = crate::one_at_a_time().await;
    the_head_restarted_empty(Duration::from_millis(500), Remaking::Undeclared).await;
    the_head_restarted_empty(Duration::from_secs(3), Remaking::Declared).await;
}

/// How the service makes a lost queue again.
#[derive(Clone, Copy)]
enum Remaking {
    /// From its declaration (`create_queue` with an adoption).
    Declared,
    /// From what the store kept of it (`remake_from_parts`).
    Undeclared,
}

/// Restarts the head's Redis empty `after` joins and admissions began.
async fn the_head_restarted_empty(after: Duration, remaking: Remaking) {
    let mut cluster = RedisCluster::start_masters(4).unwrap_or_else(|e| panic!("{e}"));
    let (store, queue, config) = sale_over_three_sub_lines(&cluster).await;
    let head = cluster.master_of("k:{sale}:config").unwrap();
    for key in sub_line_keys(&cluster) {
        assert_ne!(
            cluster.master_of(&key).unwrap(),
            head,
            "{key} on the head's node"
        );
    }

    let mut joins = line_of(&store, &queue, "early", LINE).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joiners = spawn_joiners(&store, &queue, &stop);
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admitter = spawn_admitter(&store, &queue, &stop, &hold);
    let remaker = {
        let (store, queue, stop, config) = (
            Arc::clone(&store),
            queue.clone(),
            Arc::clone(&stop),
            config.clone(),
        );
        tokio::spawn(async move {
            let mut made = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if matches!(store.queue_lost(&queue).await, Ok(true)) {
                    let again = match remaking {
                        Remaking::Declared => {
                            let mut again = config.clone();
                            again.created_at_ms = now_ms();
                            again.adoption = Some(waitroom::domain::Adoption::default());
                            store.create_queue(&again).await.ok()
                        }
                        Remaking::Undeclared => store
                            .remake_from_parts(&queue, config.created_at_ms, now_ms())
                            .await
                            .ok()
                            .flatten(),
                    };
                    made.extend(again.map(|queue| queue.created_at_ms));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            made
        })
    };
    tokio::time::sleep(after).await;
    let node = cluster
        .nodes
        .iter_mut()
        .find(|node| node.port == head)
        .unwrap();
    node.restart().unwrap();
    let restarted = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // A loaded machine brings the restarted master back into its Cluster
    // later: the sale goes on until the queue is back.
    while !matches!(store.queue_lost(&queue).await, Ok(false)) {
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "the queue never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for joiner in joiners {
        joins.extend(joiner.await.unwrap());
    }
    let (batches, _, _) = admitter.await.unwrap();
    let made = remaker.await.unwrap();
    assert_eq!(
        made,
        vec![config.created_at_ms],
        "made again once, as the same queue"
    );

    // Every sub-line's joins go on once the head is back (a master started
    // again refuses calls for its first two seconds).
    for sub_line in 0..3 {
        let answered = joins
            .iter()
            .filter(|(_, j)| j.sub_line == sub_line && j.sent > restarted + Duration::from_secs(4))
            .filter(|(_, j)| j.ticket.is_some())
            .count();
        assert!(
            answered > 50,
            "sub-line {sub_line}: {answered} joins answered after"
        );
    }
    no_ticket_twice(&joins);
    let admitted = admitted_in_order([batches, drain(&store, &queue).await]);
    // An admission under way when the head was lost popped its users on
    // some sub-lines and could not settle: they are admitted (their pages
    // show it), though no answer named them.
    let mut unanswered = 0;
    for (user, join) in &joins {
        let Some(ticket) = join.ticket else { continue };
        if admitted.get(&ticket) == Some(user) {
            continue;
        }
        let place = store.place(&queue, user, now_ms()).await.unwrap();
        match place {
            Some(place)
                if matches!(place.state, PlaceState::Admitted(_)) && place.ticket == ticket =>
            {
                unanswered += 1;
            }
            other => panic!(
                "{user:?} (ticket {ticket}, sub-line {}) was acknowledged and lost: {other:?}",
                join.sub_line
            ),
        }
    }
    assert!(unanswered <= 50, "{unanswered} admitted by no answer");
    eprintln!(
        "{} admitted, none lost ({unanswered} by an admission the head's loss cut short); {} joins",
        admitted.len(),
        joins.len()
    );
}

/// Asserts that no ticket was given to two joins.
fn no_ticket_twice(joins: &[(UserId, Join)]) {
    let mut tickets: Vec<u64> = joins.iter().filter_map(|(_, j)| j.ticket).collect();
    let given = tickets.len();
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), given, "a ticket was given twice");
}

/// Everyone admitted, by ticket, asserting that each run of admissions
/// (while joins ran, then the drain) went in ticket order and that nobody
/// was admitted twice.
fn admitted_in_order<const N: usize>(runs: [Vec<Vec<(UserId, u64)>>; N]) -> BTreeMap<u64, UserId> {
    let mut admitted = BTreeMap::new();
    for admissions in runs {
        let mut last = 0;
        for (user, ticket) in admissions.into_iter().flatten() {
            assert!(ticket > last, "admitted out of ticket order");
            last = ticket;
            assert!(
                admitted.insert(ticket, user.clone()).is_none(),
                "{user:?} admitted twice"
            );
        }
    }
    admitted
}

/// Admits everyone left, a hundred a call until none is: each batch's
/// users with their tickets.
async fn drain(store: &RedisStore, queue: &QueueId) -> Vec<Vec<(UserId, u64)>> {
    let mut drained = Vec::new();
    for batch in 0.. {
        let request = RequestId::parse(&format!("drain-{batch}")).unwrap();
        let answer = store
            .admit(queue, 100, Some(&request), now_ms())
            .await
            .unwrap();
        if answer.is_empty() {
            break;
        }
        drained.push(
            answer
                .into_iter()
                .map(|a| (a.user, a.admission.ticket))
                .collect(),
        );
    }
    drained
}

/// The line a sale has built when the faults begin, long enough that the
/// admitter, at 2,000 a second, never empties it.
const LINE: usize = 12_000;

/// `n` users (`name-0`, `name-1`, …) joined in calls of 250, as the service
/// batches a crowd's joins: what each was answered.
async fn line_of(store: &RedisStore, queue: &QueueId, name: &str, n: usize) -> Vec<(UserId, Join)> {
    let users: Vec<UserId> = (0..n)
        .map(|i| UserId::parse(&format!("{name}-{i}")).unwrap())
        .collect();
    let mut joins = Vec::with_capacity(n);
    for chunk in users.chunks(250) {
        let sent = std::time::Instant::now();
        let answers = store.enqueue_many(queue, chunk, now_ms()).await.unwrap();
        let at = std::time::Instant::now();
        for (user, answer) in chunk.iter().zip(answers) {
            let place = answer.unwrap();
            let sub_line = sub_line_of(user.as_str(), 3) as usize;
            let ticket = Some(place.ticket);
            let error = None;
            joins.push((
                user.clone(),
                Join {
                    sub_line,
                    ticket,
                    error,
                    sent,
                    at,
                },
            ));
        }
    }
    joins
}

/// Three joiners a sub-line of the queue over three, each joining users of
/// its own sub-line one after another until `stop`: what each was
/// answered, and when.
fn spawn_joiners(
    store: &Arc<RedisStore>,
    queue: &QueueId,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(UserId, Join)>>> {
    spawn_crowd(store, queue, stop, "s", 3)
}

/// Joiners on each sub-line, each joining one new user after another:
/// [`CROWD`] keep more joins waiting on a sub-line than one call takes.
const CROWD: usize = 800;

fn spawn_crowd(
    store: &Arc<RedisStore>,
    queue: &QueueId,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    prefix: &'static str,
    per_sub_line: usize,
) -> Vec<tokio::task::JoinHandle<Vec<(UserId, Join)>>> {
    let mut joiners = Vec::new();
    for sub_line in 0..3usize {
        for joiner in 0..per_sub_line {
            let (store, queue, stop) = (Arc::clone(store), queue.clone(), Arc::clone(stop));
            joiners.push(tokio::spawn(async move {
                let mut joins = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("{prefix}{sub_line}-j{joiner}-{n}");
                    if sub_line_of(&name, 3) as usize != sub_line {
                        continue;
                    }
                    let user = UserId::parse(&name).unwrap();
                    let sent = std::time::Instant::now();
                    let answer = store.enqueue(&queue, &user, now_ms()).await;
                    joins.push((
                        user,
                        Join {
                            sub_line,
                            ticket: answer.as_ref().ok().map(|place| place.ticket),
                            error: answer.err().map(|e| e.to_string()),
                            sent,
                            at: std::time::Instant::now(),
                        },
                    ));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                joins
            }));
        }
    }
    joiners
}

/// What the admitter admitted, batch by batch, when each was answered,
/// and how many of its calls were refused.
type Admissions = (Vec<Vec<(UserId, u64)>>, Vec<std::time::Instant>, usize);

/// One admitter until `stop`, holding off while `hold`: batches of fifty
/// (at most 2,000 a second) under their own request ids, each retried under its id until answered
/// (its pops need every sub-line, so it waits out a failover).
fn spawn_admitter(
    store: &Arc<RedisStore>,
    queue: &QueueId,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    hold: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Admissions> {
    let (store, queue, stop, hold) = (
        Arc::clone(store),
        queue.clone(),
        Arc::clone(stop),
        Arc::clone(hold),
    );
    tokio::spawn(async move {
        let mut batches: Vec<Vec<(UserId, u64)>> = Vec::new();
        let mut answered_at = Vec::new();
        let mut failures = 0;
        for batch in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if hold.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let request = RequestId::parse(&format!("a{batch}")).unwrap();
            let patience = (300, Duration::from_millis(100));
            let started = std::time::Instant::now();
            let (admitted, refused) =
                admit_answered(&store, &queue, 50, &request, now_ms, patience).await;
            failures += refused;
            batches.push(admitted);
            answered_at.push(std::time::Instant::now());
            // At most 2,000 a second whatever the machine: a faster one
            // would empty the line before the late faults.
            let pace = Duration::from_millis(25).saturating_sub(started.elapsed());
            tokio::time::sleep(pace.max(Duration::from_millis(5))).await;
        }
        (batches, answered_at, failures)
    })
}

/// A store on `cluster` serving sub-lines, with the queue `sale` made over
/// three, its admissions and presence kept for an hour.
async fn sale_over_three_sub_lines(
    cluster: &RedisCluster,
) -> (Arc<RedisStore>, QueueId, QueueConfig) {
    let store = Arc::new(
        RedisStore::connect(&RedisOptions {
            url: cluster.urls(),
            password: None,
            cluster: true,
            prefix: "k".into(),
            // The service's default: a join waits this long for an answer.
            timeout: Duration::from_secs(1),
            sentinel_master: None,
            sentinel_password: None,
        })
        .await
        .unwrap()
        .with_sub_lines(),
    );
    let queue = QueueId::parse("sale").unwrap();
    let mut config = QueueConfig::new(queue.clone()).created(now_ms());
    config.shards = 3;
    config.admission_ttl = Duration::from_secs(3600);
    config.heartbeat_timeout = Duration::from_secs(3600);
    store.create_queue(&config).await.unwrap();
    (store, queue, config)
}

/// A place given back from a receipt of a lost line, whose ticket another
/// sub-line's open block gives to a newcomer after the restore asked it and
/// before the head decided (the head's node stalled in between): the
/// restore learns it when it closes that block, and refuses, so no ticket
/// is held twice. The same when the returning user's own sub-line gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_given_by_another_sub_line_while_the_head_decides_is_not_given_back() {
    let _one = crate::one_at_a_time().await;
    given_while_the_head_decides(false).await;
    given_while_the_head_decides(true).await;
}

/// Gives the ticket from the returning user's own sub-line's block if
/// `own_gives`, else from another's.
async fn given_while_the_head_decides(own_gives: bool) {
    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::connect(&RedisOptions {
        url: cluster.urls(),
        password: None,
        cluster: true,
        prefix: "k".into(),
        timeout: Duration::from_secs(2),
        sentinel_master: None,
        sentinel_password: None,
    })
    .await
    .unwrap()
    .with_sub_lines();
    let queue = QueueId::parse("sale").unwrap();
    // Made again from a lost line nobody saw: a receipt of it may vouch for
    // a ticket the new line's blocks hold.
    let now = now_ms();
    let mut config = QueueConfig::new(queue.clone()).created(now);
    config.shards = 4;
    config.adoption = Some(waitroom::domain::Adoption::default());
    store.create_queue(&config).await.unwrap();
    let config_of = |sub_line: u32| format!("k:{{sale/4~{sub_line}}}:config");
    let head = cluster.master_of("k:{sale}:config").unwrap();
    let away = |sub_line: u32| cluster.master_of(&config_of(sub_line)).unwrap() != head;
    // The returning user's sub-line and the other are away from the head,
    // and so is every sub-line the restore asks before the other, so that
    // it has asked the other when it waits for the head.
    let (own, other) = (0..4)
        .flat_map(|own| (0..4).map(move |other| (own, other)))
        .find(|&(own, other)| own != other && away(own) && (0..=other).all(|s| s == own || away(s)))
        .expect("sub-lines away from the head");
    let of = |sub_line: u32| {
        (0..)
            .map(move |n| UserId::parse(&format!("u{sub_line}-{n}")).unwrap())
            .filter(move |user| sub_line_of(user.as_str(), 4) == sub_line)
    };
    let node = |port: u16| cluster.nodes.iter().find(|n| n.port == port).unwrap();
    let giver = if own_gives { own } else { other };
    let giver_node = node(cluster.master_of(&config_of(giver)).unwrap());
    // Every sub-line has served a call (its first reads the head), and the
    // giver's joins (all at one moment, so its block stays open) go on
    // until its block has tickets left to give.
    for sub_line in 0..4 {
        let user = of(sub_line).nth(1).unwrap();
        store.enqueue(&queue, &user, now).await.unwrap();
    }
    let mut newcomers = of(giver).skip(2);
    let ticket = loop {
        let user = newcomers.next().unwrap();
        store.enqueue(&queue, &user, now).await.unwrap();
        let block = cmd(
            giver_node,
            &["HMGET", &config_of(giver), "block_next", "block_end"],
        );
        let numbers: Vec<u64> = redis::from_redis_value(block).unwrap();
        if numbers[0] + 1 < numbers[1] {
            break numbers[0];
        }
    };
    let returning = of(own).next().unwrap();
    let claim = PlaceClaim {
        epoch_ms: now - 60_000,
        ticket,
        head: 0,
        top: 0,
        issued_ms: now,
    };
    let store = Arc::new(store);
    // The layout read just now (it is read again after a second), so the
    // restore starts with the sub-lines: a receipt of someone in line
    // changes nothing.
    let holder = of(own).nth(1).unwrap();
    let held = store.restore(&queue, &holder, &claim, now).await.unwrap();
    assert_eq!(held, Restoration::Holds);
    let head_node = node(head);
    head_node.pause().unwrap();
    let restore = {
        let (store, queue, returning) = (Arc::clone(&store), queue.clone(), returning.clone());
        tokio::spawn(async move { store.restore(&queue, &returning, &claim, now).await })
    };
    // The restore has asked the other sub-lines and waits for the head.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newcomer = newcomers.next().unwrap();
    let join = {
        let (store, queue, newcomer) = (Arc::clone(&store), queue.clone(), newcomer.clone());
        tokio::spawn(async move { store.enqueue(&queue, &newcomer, now).await })
    };
    let waiting = format!("k:{{sale/4~{giver}}}:waiting");
    wait_until("the newcomer joined", Duration::from_secs(5), || {
        std::future::ready(!matches!(
            cmd(giver_node, &["ZSCORE", &waiting, newcomer.as_str()]),
            redis::Value::Nil
        ))
    })
    .await;
    head_node.resume().unwrap();
    let joined = join.await.unwrap().unwrap();
    assert_eq!(joined.ticket, ticket, "the newcomer took the ticket");
    let restored = restore.await.unwrap().unwrap();
    assert_eq!(
        restored,
        Restoration::Refused(waitroom::domain::Refusal::NotGiven),
        "ticket {ticket} given back while a newcomer holds it"
    );
    assert!(
        store
            .place(&queue, &returning, now)
            .await
            .unwrap()
            .is_none()
    );
    // The refusal is final: with the newcomer gone, the same receipt is
    // not given the ticket (admitted or left, it stays theirs).
    assert!(store.leave(&queue, &newcomer, now).await.unwrap());
    let again = store
        .restore(&queue, &returning, &claim, now)
        .await
        .unwrap();
    assert_eq!(
        again,
        Restoration::Refused(waitroom::domain::Refusal::NotGiven),
        "ticket {ticket} given back after its holder left"
    );
}

/// A scheduled opening over sub-lines drawn by two replicas at once while
/// newcomers join, through a Redis stalled at several moments of the draw
/// and for several durations (shorter and longer than the store's
/// timeout): everyone pre-queued is placed once, in the seed's order, on
/// the reservation's tickets, and every newcomer stands behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_over_sub_lines_through_a_stall_places_everyone_once_in_the_seed_s_order() {
    let _one = crate::one_at_a_time().await;
    // (draw steps answered before the stall, how long it lasts)
    for (after, stall) in [(8, 1_500), (100, 800), (140, 300)] {
        draw_through_a_stall(after, Duration::from_millis(stall)).await;
    }
}

async fn draw_through_a_stall(after_steps: usize, stall: Duration) {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let queue = QueueId::parse("drop").unwrap();
    let users = 2_000 * crate::scale();
    let replicas = [replica(&redis, "f").await, replica(&redis, "f").await];
    let opens_at = T0 + 60_000;
    let mut config = QueueConfig::new(queue.clone()).created(T0);
    config.shards = 3;
    config.opens_at_ms = Some(opens_at);
    config.prequeue_window = Duration::from_secs(60);
    replicas[0].create_queue(&config).await.unwrap();
    let early: Vec<UserId> = (0..users)
        .map(|n| UserId::parse(&format!("e{n}")).unwrap())
        .collect();
    for chunk in early.chunks(50) {
        for place in replicas[0]
            .enqueue_many(&queue, chunk, T0 + 1_000)
            .await
            .unwrap()
        {
            assert!(matches!(place.unwrap().state, PlaceState::PreQueue { .. }));
        }
    }
    let at = format!("a stall of {stall:?} after {after_steps} steps");
    // Each replica draws in steps of 25, trying again a step that got no
    // answer; a third joins newcomers all along.
    let steps = Arc::new(AtomicUsize::new(0));
    let mut drawers = Vec::new();
    for (r, store) in replicas.iter().enumerate() {
        let (store, queue, steps) = (Arc::clone(store), queue.clone(), Arc::clone(&steps));
        drawers.push(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match store
                    .draw_step(&queue, &format!("seed-{r}"), 25, opens_at + 1)
                    .await
                {
                    Ok(true) => return failures,
                    Ok(false) => {
                        steps.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        failures += 1;
                        assert!(failures < 200, "the draw never answered: {error}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let joiner = {
        let (store, queue) = (replica(&redis, "f").await, queue.clone());
        tokio::spawn(async move {
            let mut joined = Vec::new();
            for n in 0..200u64 {
                let user = UserId::parse(&format!("n{n}")).unwrap();
                if let Ok(place) = store.enqueue(&queue, &user, opens_at + n).await {
                    joined.push((user, place.ticket));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            joined
        })
    };
    let waiting = std::time::Instant::now();
    while steps.load(Ordering::Relaxed) < after_steps {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "{at}: never reached"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    redis.pause().unwrap();
    tokio::time::sleep(stall).await;
    redis.resume().unwrap();
    let mut failures = 0;
    for drawer in drawers {
        failures += drawer.await.unwrap();
    }
    if stall > TIMEOUT {
        assert!(failures > 0, "{at} made some steps fail");
    }
    let joined = joiner.await.unwrap();
    let config = replicas[1].get_queue(&queue).await.unwrap();
    assert!(config.draw_complete, "{at}");
    let seed = config.draw_seed.unwrap();
    assert!(seed == "seed-0" || seed == "seed-1", "{seed}");
    drawn_once_in_order(&replicas[1], &queue, &early, &seed, opens_at + 2_000, &at).await;
    assert!(!joined.is_empty(), "{at}: nobody joined");
    let mut later: Vec<u64> = joined.iter().map(|(_, t)| *t).collect();
    later.sort_unstable();
    later.dedup();
    assert_eq!(later.len(), joined.len(), "a ticket twice, {at}");
    assert!(
        later[0] > users as u64,
        "a newcomer ahead of the drawn, {at}"
    );
    println!(
        "{at}: {users} drawn in the seed's order, {} newcomers behind, {failures} steps refused",
        joined.len()
    );
}

/// A scheduled opening over three sub-lines on a Cluster with a replica
/// for every primary: a sub-line's primary killed while two replicas draw
/// (while the keys are given, and while users are placed), its replica (in
/// step) taking over: the draw waits for it and carries on, everyone
/// pre-queued placed once on the reservation's tickets, in the seed's
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_line_s_primary_killed_during_the_draw_leaves_everyone_drawn_once_in_order() {
    let _one = crate::one_at_a_time().await;
    // While the keys are given (3,000 in steps of 25 take 120), and while
    // they are placed.
    for after in [40, 150] {
        primary_killed_during_the_draw(after).await;
    }
}

async fn primary_killed_during_the_draw(after_steps: usize) {
    let mut cluster = RedisCluster::start_with_replicas(1).unwrap_or_else(|e| panic!("{e}"));
    let (store, queue, _) = sale_over_three_sub_lines(&cluster).await;
    let (_, master, _) = sub_line_with_replica(&cluster, false).await;
    // The opening is set once the replica is in step (its first copy
    // takes a few seconds), with time to pre-queue everyone first.
    let opens_at = now_ms() + 4_000;
    let moved = waitroom::domain::QueueUpdate {
        opens_at: Some(Some(opens_at)),
        prequeue_window: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    store.update_queue(&queue, &moved, now_ms()).await.unwrap();
    let early: Vec<UserId> = (0..3_000 * crate::scale())
        .map(|n| UserId::parse(&format!("e{n}")).unwrap())
        .collect();
    for chunk in early.chunks(100) {
        for place in store.enqueue_many(&queue, chunk, now_ms()).await.unwrap() {
            let place = place.unwrap();
            assert!(
                matches!(place.state, PlaceState::PreQueue { .. }),
                "{place:?}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(opens_at.saturating_sub(now_ms()))).await;
    let steps = Arc::new(AtomicUsize::new(0));
    let mut drawers = Vec::new();
    for seed in ["first", "second"] {
        let (store, queue, steps) = (Arc::clone(&store), queue.clone(), Arc::clone(&steps));
        drawers.push(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match store.draw_step(&queue, seed, 25, now_ms()).await {
                    Ok(true) => return failures,
                    Ok(false) => {
                        steps.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        failures += 1;
                        assert!(failures < 600, "the draw never answered: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let waiting = std::time::Instant::now();
    while steps.load(Ordering::Relaxed) < after_steps {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "{after_steps} steps never made"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let node = cluster
        .nodes
        .iter_mut()
        .find(|node| node.port == master)
        .unwrap();
    node.stop();
    let mut failures = 0;
    for drawer in drawers {
        failures += drawer.await.unwrap();
    }
    let config = store.get_queue(&queue).await.unwrap();
    assert!(config.draw_complete);
    let seed = config.draw_seed.unwrap();
    let at = format!("a primary killed after {after_steps} steps");
    drawn_once_in_order(&store, &queue, &early, &seed, now_ms(), &at).await;
    eprintln!(
        "{} drawn once in the seed's order through a sub-line's failover after {after_steps} steps, {failures} steps refused",
        early.len()
    );
}

/// A sub-line of `sale` whose primary holds the head (`on_head`) or does
/// not: its number, its primary's port and its replica's, once the
/// replica has synchronised (a replica takes over only once it has; its
/// first full copy waits out the diskless sync delay).
async fn sub_line_with_replica(cluster: &RedisCluster, on_head: bool) -> (usize, u16, u16) {
    let (head, _) = cluster.master_and_replica_of("k:{sale}:config").unwrap();
    let keys = sub_line_keys(cluster);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let (sub_line, master, replica) = keys
        .iter()
        .enumerate()
        .find_map(|(sub_line, key)| {
            let (master, replica) = cluster.master_and_replica_of(key).unwrap();
            ((master == head) == on_head).then_some((sub_line, master, replica))
        })
        .expect("the sub-lines spread over the masters");
    let replica = replica.expect("the test cluster has a replica per master");
    let replica_node = cluster.nodes.iter().find(|n| n.port == replica).unwrap();
    wait_until("the replica synchronised", Duration::from_secs(30), || {
        std::future::ready(replica_link_up(replica_node))
    })
    .await;
    (sub_line, master, replica)
}

/// Everyone of `early` (pre-queued, nobody left) drawn once: waiting on
/// the reservation's tickets 1..=N, in the order of `seed`.
async fn drawn_once_in_order(
    store: &RedisStore,
    queue: &QueueId,
    early: &[UserId],
    seed: &str,
    now: u64,
    at: &str,
) {
    let mut drawn = Vec::new();
    for chunk in early.chunks(500) {
        let places = store.places(queue, chunk, false, now).await.unwrap();
        for (user, place) in chunk.iter().zip(places) {
            let place = place.unwrap_or_else(|| panic!("{user} lost its place, {at}"));
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{user}: {place:?}, {at}"
            );
            drawn.push((place.ticket, user.clone()));
        }
    }
    drawn.sort();
    let tickets: Vec<u64> = drawn.iter().map(|(t, _)| *t).collect();
    let out_of_place = tickets.iter().zip(1..).find(|(ticket, n)| **ticket != *n);
    assert_eq!(
        out_of_place,
        None,
        "{at}: not the reservation 1..={}",
        early.len()
    );
    assert_eq!(tickets.len(), early.len(), "{at}");
    let order: Vec<UserId> = drawn.into_iter().map(|(_, u)| u).collect();
    assert_eq!(
        order,
        waitroom::domain::draw::draw_order(seed, early),
        "{at}"
    );
}
