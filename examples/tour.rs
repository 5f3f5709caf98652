//! A tour of waitroom as its callers use it, against a running service:
//!
//! ```sh
//! cargo run --release                      # in one terminal
//! cargo run --release --example tour       # in another
//! ```
//!
//! It creates a queue, puts a crowd and then "you" in line, watches your
//! position fall while an admission loop lets one person in every half
//! second, and finally checks your admission token twice: online with
//! `VerifyAdmission`, and offline the way a booking service would, with the
//! published keys only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio_stream::StreamExt;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::pb::{self, PlaceState};
use waitroom::tokens::Verifier;

#[derive(Parser)]
struct Args {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The queue to use; created if missing.
    #[arg(long, default_value = "tour")]
    queue: String,
    /// People ahead of you.
    #[arg(long, default_value_t = 8)]
    ahead: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut admin = QueueAdminServiceClient::connect(args.addr.clone()).await?;
    let mut queue = QueueServiceClient::connect(args.addr.clone()).await?;
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();

    match admin
        .create_queue(pb::CreateQueueRequest {
            queue: Some(pb::Queue {
                id: args.queue.clone(),
                ..Default::default()
            }),
        })
        .await
    {
        Ok(_) => println!("created queue {:?}", args.queue),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            println!("queue {:?} exists; using it", args.queue)
        }
        Err(s) => return Err(s.into()),
    }

    for n in 0..args.ahead {
        let user_id = format!("crowd-{run}-{n}");
        queue
            .enqueue(pb::EnqueueRequest {
                queue_id: args.queue.clone(),
                user_id,
                receipt: String::new(),
            })
            .await?;
    }
    let you = format!("you-{run}");
    let place = queue
        .enqueue(pb::EnqueueRequest {
            queue_id: args.queue.clone(),
            user_id: you.clone(),
            receipt: String::new(),
        })
        .await?
        .into_inner()
        .place
        .unwrap_or_default();
    println!(
        "you ({you}) have ticket {} at position {} of {}",
        place.ticket, place.position, place.waiting_count
    );

    // The admission side: one person every half second, from the moment
    // you see your first place until you are admitted.
    let mut admitter = queue.clone();
    let (queue_id, admitted_last) = (args.queue.clone(), you.clone());
    let watching = Arc::new(tokio::sync::Notify::new());
    let first_place = Arc::clone(&watching);
    let admitting = tokio::spawn(async move {
        first_place.notified().await;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let request = pb::AdmitBatchRequest {
                queue_id: queue_id.clone(),
                max_count: 1,
                request_id: String::new(),
            };
            match admitter.admit_batch(request).await {
                Ok(response) => {
                    for admitted in response.into_inner().admitted {
                        println!("  admitted {}", admitted.user_id);
                        if admitted.user_id == admitted_last {
                            return;
                        }
                    }
                }
                Err(status) => println!("  admit_batch: {status}"),
            }
        }
    });

    // The receipt of your last place goes back with your next call: the
    // service answers from its copy of the line, and gives the place back
    // if its store lost it.
    let mut stream = queue
        .watch_rank(pb::WatchRankRequest {
            queue_id: args.queue.clone(),
            user_id: you.clone(),
            receipt: place.receipt.clone(),
        })
        .await?
        .into_inner();
    let mut token = None;
    while let Some(update) = stream.next().await {
        let place = update?.place.unwrap_or_default();
        match place.state() {
            PlaceState::Waiting => {
                let wait = place
                    .estimated_wait
                    .map(|d| format!("about {} s", d.seconds))
                    .unwrap_or_else(|| "unknown yet".into());
                println!(
                    "position {:>3} of {:>3}, estimated wait {wait}",
                    place.position, place.waiting_count
                );
                watching.notify_one();
            }
            PlaceState::Admitted => {
                // Said once the admitting side has said it let you in.
                let _ = tokio::time::timeout(Duration::from_secs(5), admitting).await;
                println!("you are in!");
                token = place.admission.map(|a| a.token);
                break;
            }
            other => println!("{other:?}"),
        }
    }
    let token = token.ok_or_else(|| anyhow::anyhow!("the stream ended without an admission"))?;
    println!("your token: {token}");

    let online = queue
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: args.queue.clone(),
            token: token.clone(),
            consume: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "VerifyAdmission (consume): {:?} for {}",
        online.verdict(),
        online.user_id
    );
    let replay = queue
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: args.queue.clone(),
            token: token.clone(),
            consume: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("VerifyAdmission again:      {:?}", replay.verdict());

    let jwks = queue
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await?
        .into_inner()
        .jwks_json;
    let verifier = Verifier::from_jwks(&jwks, "waitroom").map_err(anyhow::Error::msg)?;
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let offline = verifier.verify(&token, &args.queue, now_s);
    println!(
        "offline check with the JWKS: {:?}, jti {}",
        offline.verdict,
        offline.claims.map(|c| c.jti).unwrap_or_default()
    );
    Ok(())
}
