//! `waitroomctl top`: every queue's figures, refreshed in place on a
//! terminal; one JSON array per refresh for scripts.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::json;
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;

use crate::output::{self, duration, print_table};
use crate::{Client, Failure, Output};

pub async fn run(
    client: &Client,
    admin: &mut QueueAdminServiceClient<tonic::transport::Channel>,
    interval: Duration,
    count: u64,
    out: Output,
) -> Result<(), Failure> {
    let live = out == Output::Table && std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = 0;
    while count == 0 || shown < count {
        ticker.tick().await;
        let figures = read(client, admin).await?;
        match out {
            Output::Json => println!(
                "{}",
                json!(
                    figures
                        .iter()
                        .map(|(q, s)| {
                            let mut value = output::stats_json(s);
                            value["mode"] = json!(output::mode_name(q.mode()));
                            value
                        })
                        .collect::<Vec<_>>()
                )
            ),
            Output::Table => {
                if live {
                    // Home and clear: the view is redrawn where it stands.
                    print!("\x1b[H\x1b[2J");
                }
                let rows: Vec<Vec<String>> = figures.iter().map(|(q, s)| row(q, s)).collect();
                print_table(
                    &[
                        "QUEUE",
                        "MODE",
                        "WAITING",
                        "ACTIVE",
                        "ARRIVALS/S",
                        "ADMITTED/S",
                        "ABANDONED/S",
                        "WAITED P50",
                        "WAITED P90",
                        "WAIT AT BACK",
                    ],
                    &rows,
                );
                let _ = std::io::stdout().flush();
            }
        }
        shown += 1;
    }
    Ok(())
}

/// Every queue with its figures, in id order.
async fn read(
    client: &Client,
    admin: &mut QueueAdminServiceClient<tonic::transport::Channel>,
) -> Result<Vec<(pb::Queue, pb::QueueStats)>, Failure> {
    let queues = client.list_all(admin).await?;
    let mut figures = Vec::with_capacity(queues.len());
    for queue in queues {
        let stats = admin
            .get_queue_stats(client.request(pb::GetQueueStatsRequest {
                queue_id: queue.id.clone(),
            }))
            .await;
        match stats {
            Ok(stats) => figures.push((queue, stats.into_inner().stats.unwrap_or_default())),
            // Deleted between the list and its figures.
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
    }
    Ok(figures)
}

fn row(queue: &pb::Queue, stats: &pb::QueueStats) -> Vec<String> {
    let wait = |d: Option<&prost_types::Duration>| {
        duration(d).map_or("-".to_owned(), |d| {
            humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
        })
    };
    vec![
        queue.id.clone(),
        output::mode_name(queue.mode()).to_owned(),
        stats.waiting_count.to_string(),
        stats.active_count.to_string(),
        format!("{:.1}", stats.arrival_rate),
        format!("{:.1}", stats.admit_rate),
        format!("{:.1}", stats.abandon_rate),
        wait(stats.waited_p50.as_ref()),
        wait(stats.waited_p90.as_ref()),
        wait(stats.back_of_line_wait.as_ref()),
    ]
}
