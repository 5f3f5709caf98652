//! What each command does: one or two calls, then output.

use std::io::{IsTerminal, Write};

use serde_json::json;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::output::{self, print_rows, print_table};
use crate::{Client, Command, Failure, Mode, Output, QueueCommand, Settings};

/// Largest response the tool reads (an `AdmitBatch` of 10,000 with tokens
/// is about 5 MB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

fn mode_value(mode: Mode) -> pb::QueueMode {
    match mode {
        Mode::Queueing => pb::QueueMode::Queueing,
        Mode::PassThrough => pb::QueueMode::PassThrough,
        Mode::Paused => pb::QueueMode::Paused,
        Mode::Closed => pb::QueueMode::Closed,
    }
}

fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The queue message and the mask of the settings given.
fn queue_message(id: String, settings: &Settings) -> (pb::Queue, Vec<String>) {
    let mut queue = pb::Queue {
        id,
        ..Default::default()
    };
    let mut mask = Vec::new();
    if let Some(mode) = settings.mode {
        queue.mode = mode_value(mode) as i32;
        mask.push("mode".to_owned());
    }
    if let Some(n) = settings.max_active {
        queue.max_active = n;
        mask.push("max_active".to_owned());
    }
    if let Some(n) = settings.admit_per_second {
        queue.admit_per_second = n;
        mask.push("admit_per_second".to_owned());
    }
    if let Some(d) = settings.admission_ttl {
        queue.admission_ttl = Some(proto_duration(d));
        mask.push("admission_ttl".to_owned());
    }
    if let Some(d) = settings.heartbeat_timeout {
        queue.heartbeat_timeout = Some(proto_duration(d));
        mask.push("heartbeat_timeout".to_owned());
    }
    if let Some(at) = settings.opens_at {
        queue.opens_at = Some(prost_types::Timestamp::from(at));
        mask.push("opens_at".to_owned());
    }
    if let Some(d) = settings.prequeue_window {
        queue.prequeue_window = Some(proto_duration(d));
        mask.push("prequeue_window".to_owned());
    }
    (queue, mask)
}

/// Changes exactly the settings given.
async fn update(
    client: &Client,
    admin: &mut QueueAdminServiceClient<tonic::transport::Channel>,
    id: String,
    settings: &Settings,
) -> Result<pb::Queue, Failure> {
    let (queue, mask) = queue_message(id, settings);
    if mask.is_empty() {
        return Err(Failure::new(2, "name at least one setting to change"));
    }
    Ok(admin
        .update_queue(client.request(pb::UpdateQueueRequest {
            queue: Some(queue),
            update_mask: Some(prost_types::FieldMask { paths: mask }),
        }))
        .await?
        .into_inner()
        .queue
        .unwrap_or_default())
}

fn show_queue(queue: &pb::Queue, out: Output) {
    match out {
        Output::Json => println!("{}", output::queue_json(queue)),
        Output::Table => print_rows(&output::queue_rows(queue)),
    }
}

pub async fn run(client: &Client, command: Command, out: Output) -> Result<(), Failure> {
    // An AdmitBatch of 10,000 carries as many tokens, over tonic's 4 MiB
    // default: the tool takes whatever the server may send.
    let mut queues = QueueServiceClient::new(client.channel.clone())
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut admin = QueueAdminServiceClient::new(client.channel.clone())
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    match command {
        Command::Queue(QueueCommand::Create {
            id,
            shards,
            settings,
        }) => {
            let (mut queue, _) = queue_message(id, &settings);
            queue.shards = shards.unwrap_or_default();
            let created = admin
                .create_queue(client.request(pb::CreateQueueRequest { queue: Some(queue) }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
            show_queue(&created, out);
        }
        Command::Queue(QueueCommand::Get { id }) => {
            let queue = admin
                .get_queue(client.request(pb::GetQueueRequest { queue_id: id }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
            show_queue(&queue, out);
        }
        Command::Queue(QueueCommand::List) => {
            let all = client.list_all(&mut admin).await?;
            match out {
                Output::Json => println!(
                    "{}",
                    json!(all.iter().map(output::queue_json).collect::<Vec<_>>())
                ),
                Output::Table => {
                    let rows: Vec<Vec<String>> = all
                        .iter()
                        .map(|q| {
                            let r = output::queue_rows(q);
                            vec![
                                r[0].1.clone(),
                                r[1].1.clone(),
                                r[2].1.clone(),
                                r[3].1.clone(),
                                r[4].1.clone(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["ID", "MODE", "MAX ACTIVE", "RATE/S", "ADMISSION TTL"],
                        &rows,
                    );
                }
            }
        }
        Command::Queue(QueueCommand::Update { id, settings }) => {
            let updated = update(client, &mut admin, id, &settings).await?;
            show_queue(&updated, out);
        }
        Command::Queue(QueueCommand::Mode { id, mode }) => {
            let settings = Settings {
                mode: Some(mode),
                ..Default::default()
            };
            let updated = update(client, &mut admin, id, &settings).await?;
            match out {
                Output::Json => println!("{}", output::queue_json(&updated)),
                Output::Table => println!(
                    "{} is now {}",
                    updated.id,
                    output::mode_name(updated.mode())
                ),
            }
        }
        Command::Queue(QueueCommand::Delete { id, yes }) => {
            if !yes {
                let stats = admin
                    .get_queue_stats(client.request(pb::GetQueueStatsRequest {
                        queue_id: id.clone(),
                    }))
                    .await?
                    .into_inner()
                    .stats
                    .unwrap_or_default();
                let (waiting, active) = (
                    stats.waiting_count + stats.prequeue_count,
                    stats.active_count,
                );
                if waiting + active > 0 {
                    return Err(Failure::new(
                        2,
                        format!(
                            "deleting {id} drops {waiting} people in line and {active} admitted (their tokens stop verifying online): add --yes"
                        ),
                    ));
                }
            }
            admin
                .delete_queue(client.request(pb::DeleteQueueRequest {
                    queue_id: id.clone(),
                }))
                .await?;
            match out {
                Output::Json => println!("{}", json!({ "deleted": id })),
                Output::Table => println!("deleted {id}"),
            }
        }
        Command::Queue(QueueCommand::Stats { id }) => {
            let stats = admin
                .get_queue_stats(client.request(pb::GetQueueStatsRequest { queue_id: id }))
                .await?
                .into_inner()
                .stats
                .unwrap_or_default();
            match out {
                Output::Json => println!("{}", output::stats_json(&stats)),
                Output::Table => print_rows(&output::stats_rows(&stats)),
            }
        }
        Command::Admit {
            queue,
            count,
            request_id,
        } => {
            // Always an id, so the operator can retry a call whose answer
            // was lost without admitting a second batch.
            let request_id = request_id.unwrap_or_else(|| {
                waitroom::domain::RequestId::generate()
                    .as_str()
                    .replacen("auto:", "ctl:", 1)
            });
            let queue_id = queue.clone();
            let admitted = queues
                .admit_batch(client.request(pb::AdmitBatchRequest {
                    queue_id: queue,
                    max_count: count,
                    request_id: request_id.clone(),
                }))
                .await
                .map_err(|status| {
                    let unanswered = unanswered(&status);
                    let mut failure = Failure::from(status);
                    if unanswered {
                        failure.add_hint(format!(
                            "the batch may have been admitted: retry with --request-id {request_id} to get its result without admitting more"
                        ));
                    }
                    failure
                })?
                .into_inner()
                .admitted;
            match out {
                Output::Json => println!(
                    "{}",
                    json!(
                        admitted
                            .iter()
                            .map(|a| json!({
                                "user_id": a.user_id,
                                "ticket": a.ticket,
                                "token": a.admission.as_ref().map(|x| x.token.clone()),
                            }))
                            .collect::<Vec<_>>()
                    )
                ),
                Output::Table => {
                    let rows: Vec<Vec<String>> = admitted
                        .iter()
                        .map(|a| vec![a.ticket.to_string(), a.user_id.clone()])
                        .collect();
                    print_table(&["TICKET", "USER"], &rows);
                    match admitted.is_empty() {
                        true => println!(
                            "admitted 0: {}",
                            why_nobody(client, &mut admin, &queue_id).await
                        ),
                        false => println!("admitted {}", admitted.len()),
                    }
                }
            }
        }
        Command::AdmitUsers {
            queue,
            users,
            request_id,
            override_capacity,
        } => {
            let request_id = request_id.unwrap_or_else(|| {
                waitroom::domain::RequestId::generate()
                    .as_str()
                    .replacen("auto:", "ctl:", 1)
            });
            let results = queues
                .admit_users(client.request(pb::AdmitUsersRequest {
                    queue_id: queue,
                    user_ids: users,
                    request_id: request_id.clone(),
                    override_capacity,
                }))
                .await
                .map_err(|status| {
                    let unanswered = unanswered(&status);
                    let mut failure = Failure::from(status);
                    if unanswered {
                        failure.add_hint(format!(
                            "the call may have been made: retry with --request-id {request_id}, which admits nobody twice"
                        ));
                    }
                    failure
                })?
                .into_inner()
                .results;
            match out {
                Output::Json => println!(
                    "{}",
                    json!(results.iter().map(output::named_json).collect::<Vec<_>>())
                ),
                Output::Table => {
                    let rows: Vec<Vec<String>> = results.iter().map(output::named_row).collect();
                    print_table(&["USER", "RESULT", "TICKET", "EXPIRES"], &rows);
                }
            }
            let refused = results
                .iter()
                .filter(|r| r.result() == pb::AdmitUserResult::NoCapacity)
                .count();
            if refused > 0 {
                return Err(Failure::new(
                    4,
                    format!(
                        "{refused} not admitted: max_active reached (an operator may add --override-capacity)"
                    ),
                ));
            }
        }
        Command::Notice { queue, text } => {
            let updated = admin
                .update_queue(client.request(pb::UpdateQueueRequest {
                    queue: Some(pb::Queue {
                        id: queue,
                        notice: text,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["notice".into()],
                    }),
                }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
            match out {
                Output::Json => println!("{}", output::queue_json(&updated)),
                Output::Table if updated.notice.is_empty() => {
                    println!("{}: notice cleared", updated.id)
                }
                Output::Table => println!("{}: notice {:?}", updated.id, updated.notice),
            }
        }
        Command::Close { queue, reason } => {
            let closed = queues
                .close_queue(client.request(pb::CloseQueueRequest {
                    queue_id: queue,
                    reason,
                }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
            match out {
                Output::Json => println!("{}", output::queue_json(&closed)),
                Output::Table => println!("{} is closed: {}", closed.id, closed.closed_reason),
            }
        }
        Command::Clear { queue, reason, yes } => {
            if !yes {
                return Err(Failure::new(
                    2,
                    format!("clearing takes everyone waiting in {queue} out of line: add --yes"),
                ));
            }
            let cleared = admin
                .clear_queue(client.request(pb::ClearQueueRequest {
                    queue_id: queue.clone(),
                    reason: reason.clone(),
                }))
                .await?
                .into_inner()
                .cleared_count;
            match out {
                Output::Json => println!(
                    "{}",
                    json!({ "queue_id": queue, "cleared": cleared, "reason": reason })
                ),
                Output::Table => println!("{queue} is closed ({reason}); cleared {cleared}"),
            }
        }
        Command::Top { interval, count } => {
            crate::top::run(client, &mut admin, interval, count, out).await?
        }
        Command::Enqueue { queue, user } => {
            let place = queues
                .enqueue(client.request(pb::EnqueueRequest {
                    queue_id: queue,
                    user_id: user,
                    receipt: String::new(),
                }))
                .await?
                .into_inner()
                .place
                .unwrap_or_default();
            match out {
                Output::Json => println!("{}", output::place_json(&place)),
                Output::Table => print_rows(&output::place_rows(&place)),
            }
        }
        Command::Watch { queue, user } => watch(client, &mut queues, queue, user, out).await?,
        Command::Verify {
            queue,
            token,
            consume,
        } => {
            let verdict = queues
                .verify_admission(client.request(pb::VerifyAdmissionRequest {
                    queue_id: queue,
                    token,
                    consume,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let name = verdict
                .verdict()
                .as_str_name()
                .trim_start_matches("VERDICT_")
                .to_lowercase();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({ "verdict": name, "user_id": verdict.user_id, "token_id": verdict.token_id })
                ),
                Output::Table => {
                    let mut rows = vec![("verdict", name.clone())];
                    if !verdict.user_id.is_empty() {
                        rows.push(("user", verdict.user_id.clone()));
                        rows.push(("token id", verdict.token_id.clone()));
                    }
                    print_rows(&rows);
                }
            }
            if verdict.verdict() != pb::Verdict::Valid {
                return Err(Failure::new(7, format!("the token is not valid: {name}")));
            }
        }
        // Answered before connecting (see main).
        Command::Sleep { .. } | Command::Completion { .. } => {}
        Command::Health { service } => {
            let status = HealthClient::new(client.channel.clone())
                .check(client.request(HealthCheckRequest {
                    service: service.clone(),
                }))
                .await?
                .into_inner()
                .status();
            let name = status.as_str_name();
            match out {
                Output::Json => println!("{}", json!({ "service": service, "status": name })),
                Output::Table => println!(
                    "{} {name}",
                    if service.is_empty() {
                        "(server)"
                    } else {
                        &service
                    }
                ),
            }
            if status != ServingStatus::Serving {
                return Err(Failure::new(7, name.to_string()));
            }
        }
    }
    Ok(())
}

/// Follows a place until admitted or closed: one line redrawn in place on
/// a terminal, one JSON object per update for scripts.
async fn watch(
    client: &Client,
    queues: &mut QueueServiceClient<tonic::transport::Channel>,
    queue: String,
    user: String,
    out: Output,
) -> Result<(), Failure> {
    let mut stream = queues
        .watch_rank(client.request(pb::WatchRankRequest {
            queue_id: queue,
            user_id: user,
            receipt: String::new(),
        }))
        .await?
        .into_inner();
    let live = out == Output::Table && std::io::stdout().is_terminal();
    let mut first_position = None;
    let mut last = pb::Place::default();
    while let Some(update) = stream.next().await {
        let place = update?.place.unwrap_or_default();
        match out {
            Output::Json => println!("{}", output::place_json(&place)),
            Output::Table => {
                let first = *first_position.get_or_insert(place.position.max(1));
                let line = output::progress_line(&place, first);
                if live {
                    print!("\r\x1b[2K{line}");
                    let _ = std::io::stdout().flush();
                } else {
                    println!("{line}");
                }
            }
        }
        last = place;
    }
    if live {
        println!();
    }
    match last.state() {
        pb::PlaceState::Admitted => {
            if out == Output::Table
                && let Some(admission) = &last.admission
            {
                println!("token {}", admission.token);
            }
            Ok(())
        }
        pb::PlaceState::Closed => Err(Failure::new(4, "the queue closed")),
        _ => Err(Failure::new(5, "the stream ended before admission")),
    }
}

/// A call that may have been made though no answer came.
fn unanswered(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// Why an admission admitted nobody, from the queue's settings and figures.
async fn why_nobody(
    client: &Client,
    admin: &mut QueueAdminServiceClient<tonic::transport::Channel>,
    queue: &str,
) -> String {
    let stats = admin
        .get_queue_stats(client.request(pb::GetQueueStatsRequest {
            queue_id: queue.to_owned(),
        }))
        .await
        .ok()
        .and_then(|r| r.into_inner().stats);
    let config = admin
        .get_queue(client.request(pb::GetQueueRequest {
            queue_id: queue.to_owned(),
        }))
        .await
        .ok()
        .and_then(|r| r.into_inner().queue);
    match (stats, config) {
        (Some(stats), _) if stats.waiting_count == 0 => "nobody is waiting".into(),
        (Some(stats), Some(config))
            if config.max_active > 0 && stats.active_count >= u64::from(config.max_active) =>
        {
            format!(
                "the queue is full: {} admitted of max_active {} (more are let in as they complete or their admissions expire)",
                stats.active_count, config.max_active
            )
        }
        _ => "nobody could be admitted now".into(),
    }
}
