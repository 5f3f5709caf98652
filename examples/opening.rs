//! A scheduled opening, against a running service:
//!
//! ```sh
//! cargo run --release                          # in one terminal
//! cargo run --release --example opening       # in another
//! ```
//!
//! It schedules a queue to open a few seconds from now, lets a crowd arrive
//! early (they are pre-queued, with the time left), and at the opening shows
//! the random order they were drawn into, the published seed, and the same
//! order recomputed from the seed alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use waitroom::domain::UserId;
use waitroom::domain::draw::draw_order;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::pb::{self, PlaceState};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Seconds until the opening.
    #[arg(long, default_value_t = 5)]
    opens_in: u64,
    /// People arriving early.
    #[arg(long, default_value_t = 8)]
    crowd: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut admin = QueueAdminServiceClient::connect(args.addr.clone()).await?;
    let mut queue = QueueServiceClient::connect(args.addr.clone()).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let queue_id = format!("opening-{}", now.as_secs());
    let opens_at = now + Duration::from_secs(args.opens_in);
    admin
        .create_queue(pb::CreateQueueRequest {
            queue: Some(pb::Queue {
                id: queue_id.clone(),
                opens_at: Some(prost_types::Timestamp {
                    seconds: opens_at.as_secs() as i64,
                    nanos: 0,
                }),
                prequeue_window: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await?;
    println!("queue {queue_id} opens in {} s", args.opens_in);

    let users: Vec<String> = (1..=args.crowd).map(|n| format!("early-{n}")).collect();
    for user in &users {
        let place = queue
            .enqueue(pb::EnqueueRequest {
                queue_id: queue_id.clone(),
                user_id: user.clone(),
                receipt: String::new(),
            })
            .await?
            .into_inner()
            .place
            .unwrap_or_default();
        let left = place
            .opens_in
            .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
            .ceil();
        println!("{user:>8}: {:?}, opens in {left} s", place.state());
    }

    tokio::time::sleep(Duration::from_secs(args.opens_in)).await;
    let late = queue
        .enqueue(pb::EnqueueRequest {
            queue_id: queue_id.clone(),
            user_id: "late".into(),
            receipt: String::new(),
        })
        .await?
        .into_inner()
        .place
        .unwrap_or_default();
    println!("opened; a late arrival gets ticket {}", late.ticket);

    let drawn = loop {
        let settings = admin
            .get_queue(pb::GetQueueRequest {
                queue_id: queue_id.clone(),
            })
            .await?
            .into_inner()
            .queue
            .unwrap_or_default();
        if settings.draw_complete {
            break settings;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut order = Vec::new();
    for user in users.iter().chain(std::iter::once(&"late".to_owned())) {
        let place = queue
            .get_rank(pb::GetRankRequest {
                queue_id: queue_id.clone(),
                user_id: user.clone(),
                receipt: String::new(),
            })
            .await?
            .into_inner()
            .place
            .unwrap_or_default();
        if place.state() == PlaceState::Waiting {
            order.push((place.position, user.clone()));
        }
    }
    order.sort();
    for (position, user) in &order {
        println!("position {position:>2}: {user}");
    }
    println!("draw seed {}", drawn.draw_seed);
    let ids = users
        .iter()
        .map(|u| UserId::parse(u).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let recomputed: Vec<String> = draw_order(&drawn.draw_seed, &ids)
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("recomputed from the seed: {}", recomputed.join(", "));
    Ok(())
}
