//! A log of every answer the clients got, and the invariants checked
//! against it after each fault: nobody admitted twice, admissions in ticket
//! order, nothing acknowledged lost, failures answered in time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::service::within;
use crate::wait::every;

/// How a call ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(Code),
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub user: String,
    pub outcome: Outcome,
    pub took: Duration,
    pub at: Instant,
}

/// One admission as an `AdmitBatch` answer gave it.
#[derive(Clone, Debug)]
pub struct Admission {
    pub user: String,
    pub ticket: u64,
    pub token: String,
    /// When the batch's answer came.
    pub at: Instant,
}

#[derive(Default)]
pub struct Ledger {
    pub enqueues: Vec<Answer>,
    /// Each answered batch, in the order the answers came.
    pub batches: Vec<Vec<Admission>>,
}

pub type Shared = Arc<Mutex<Ledger>>;

pub fn shared() -> Shared {
    Arc::default()
}

/// Enqueues `user` and logs the answer.
pub async fn enqueue(
    client: &mut QueueServiceClient<Channel>,
    ledger: &Shared,
    queue: &str,
    user: &str,
    deadline: Duration,
) -> Outcome {
    let started = Instant::now();
    let result = client
        .enqueue(within(
            pb::EnqueueRequest {
                queue_id: queue.into(),
                user_id: user.into(),
                receipt: String::new(),
            },
            deadline,
        ))
        .await;
    let outcome = match result {
        Ok(_) => Outcome::Ok,
        Err(status) => {
            // Shown with a failing test's output: which refusal it was.
            if status.code() != tonic::Code::Unavailable {
                eprintln!("enqueue of {user} refused: {status:?}");
            }
            Outcome::Failed(status.code())
        }
    };
    ledger.lock().unwrap().enqueues.push(Answer {
        user: user.into(),
        outcome: outcome.clone(),
        took: started.elapsed(),
        at: started,
    });
    outcome
}

/// Admits up to `count` with `request_id`, retrying the same id until an
/// answer comes (as a careful admission service does). `None` when no
/// answer came within `give_up`.
pub async fn admit_until_answered(
    client: &mut QueueServiceClient<Channel>,
    ledger: &Shared,
    queue: &str,
    count: u32,
    request_id: &str,
    give_up: Duration,
) -> Option<usize> {
    let started = Instant::now();
    // Retried at most every 50 ms.
    let mut beat = every(Duration::from_millis(50));
    while started.elapsed() < give_up {
        beat.tick().await;
        let result = client
            .admit_batch(within(
                pb::AdmitBatchRequest {
                    queue_id: queue.into(),
                    max_count: count,
                    request_id: request_id.into(),
                },
                Duration::from_secs(3),
            ))
            .await;
        match result {
            Ok(answer) => {
                let batch: Vec<Admission> = answer
                    .into_inner()
                    .admitted
                    .into_iter()
                    .map(|a| Admission {
                        user: a.user_id,
                        ticket: a.ticket,
                        token: a.admission.map(|x| x.token).unwrap_or_default(),
                        at: Instant::now(),
                    })
                    .collect();
                let n = batch.len();
                ledger.lock().unwrap().batches.push(batch);
                return Some(n);
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Unknown
                            | Code::Cancelled
                    ),
                    "AdmitBatch answered {status:?}"
                );
            }
        }
    }
    None
}

impl Ledger {
    /// Users whose enqueue was acknowledged.
    pub fn acknowledged(&self) -> HashSet<String> {
        self.enqueues
            .iter()
            .filter(|a| a.outcome == Outcome::Ok)
            .map(|a| a.user.clone())
            .collect()
    }

    /// Every admission answered, in answer order.
    pub fn admissions(&self) -> Vec<Admission> {
        self.batches.iter().flatten().cloned().collect()
    }

    /// Nobody admitted twice, however the retries went: a batch retried
    /// with its request id is logged once, with the answer that came.
    pub fn assert_nobody_admitted_twice(&self) {
        let mut by_user: HashMap<&str, u64> = HashMap::new();
        for admission in self.batches.iter().flatten() {
            if let Some(ticket) = by_user.insert(&admission.user, admission.ticket) {
                panic!(
                    "{} admitted twice (tickets {ticket} and {})",
                    admission.user, admission.ticket
                );
            }
        }
    }

    /// With one admitter, each batch takes the lowest tickets waiting:
    /// tickets rise from batch to batch and within each.
    pub fn assert_admitted_in_ticket_order(&self) {
        let mut last = 0;
        for admission in self.admissions() {
            assert!(
                admission.ticket > last,
                "ticket {} admitted after ticket {last}",
                admission.ticket
            );
            last = admission.ticket;
        }
    }

    /// Every acknowledged user was admitted (the line was drained).
    pub fn assert_every_acknowledged_admitted(&self) {
        let admitted: HashSet<String> = self.admissions().into_iter().map(|a| a.user).collect();
        let lost: Vec<String> = self.acknowledged().difference(&admitted).cloned().collect();
        assert!(lost.is_empty(), "acknowledged but never admitted: {lost:?}");
    }

    /// Every admitted user did ask to join.
    pub fn assert_only_joiners_admitted(&self) {
        let asked: HashSet<&str> = self.enqueues.iter().map(|a| a.user.as_str()).collect();
        for admission in self.admissions() {
            assert!(
                asked.contains(admission.user.as_str()),
                "{} admitted without asking",
                admission.user
            );
        }
    }

    /// Every failed call was answered within `limit`, none hung.
    pub fn assert_failures_answered_within(&self, limit: Duration) {
        for answer in &self.enqueues {
            if let Outcome::Failed(code) = &answer.outcome {
                assert_ne!(*code, Code::DeadlineExceeded, "a call hung: {answer:?}");
                assert!(
                    answer.took <= limit,
                    "answered {code:?} after {:?}",
                    answer.took
                );
            }
        }
    }
}

/// Admits everyone left in `queue`, a batch at a time, until a batch comes
/// back empty.
pub async fn drain(
    client: &mut QueueServiceClient<Channel>,
    ledger: &Shared,
    queue: &str,
    tag: &str,
) {
    for round in 0.. {
        let admitted = admit_until_answered(
            client,
            ledger,
            queue,
            500,
            &format!("{tag}-drain-{round}"),
            Duration::from_secs(20),
        )
        .await
        .expect("the service answers again after the fault");
        if admitted == 0 {
            return;
        }
    }
}

type Client = QueueServiceClient<Channel>;

/// A sale under a fault: joins through each of `joiners` (one every 15 ms
/// each), and batches of `batch` admitted through `admitters` in turn, each
/// batch retried with its request id, through the next replica when one
/// gives no answer, until answered; for `run`, while `fault` runs
/// alongside (it waits for its own moment).
pub async fn traffic(
    joiners: Vec<Client>,
    admitters: Vec<Client>,
    ledger: &Shared,
    run: Duration,
    batch: u32,
    fault: impl Future<Output = ()>,
) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in joiners.into_iter().enumerate() {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            let mut beat = every(Duration::from_millis(15));
            while started.elapsed() < run {
                beat.tick().await;
                let user = format!("j{c}-{n}");
                enqueue(&mut client, &ledger, "sale", &user, Duration::from_secs(3)).await;
                n += 1;
            }
        }));
    }
    let ledger_ = ledger.clone();
    tasks.push(tokio::spawn(async move {
        let mut k = 0;
        let mut beat = every(Duration::from_millis(40));
        while started.elapsed() < run {
            beat.tick().await;
            let request = format!("batch-{k}");
            let mut answered = false;
            for attempt in 0..20 {
                let mut client = admitters[(k + attempt) % admitters.len()].clone();
                if admit_until_answered(
                    &mut client,
                    &ledger_,
                    "sale",
                    batch,
                    &request,
                    Duration::from_millis(1500),
                )
                .await
                .is_some()
                {
                    answered = true;
                    break;
                }
            }
            assert!(answered, "no replica answered {request}");
            k += 1;
        }
    }));
    fault.await;
    for task in tasks {
        task.await.unwrap();
    }
}
