//! Admission throughput with tokens against the raw Ed25519 signing rate.
//!
//! Every admitted user costs the service one signature. The scenario fills
//! a queue, admits it in batches, and reports admitted users per second of
//! wall time and per second of the service's own CPU time, beside the raw
//! Ed25519 signing rate of one core measured in the same run: admissions
//! per CPU-second over signatures per CPU-second is the throughput on the
//! cores the service uses, whatever else shares the machine.

use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use waitroom::domain::{Admission, QueueId, UserId};
use waitroom::pb;
use waitroom::tokens::{AdmissionClaims, Keyring};

use crate::harness::{Service, Store, enqueue_users};

#[derive(clap::Args)]
pub struct Args {
    /// Users to admit.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Users per AdmitBatch.
    #[arg(long, default_value_t = 1000)]
    batch: u32,
    /// AdmitBatch calls in flight at once.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    #[arg(long, value_enum, default_value_t = Store::Redis)]
    store: Store,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let service = Service::start(args.store, &[]).await?;
    service
        .create_queue(pb::Queue {
            id: "bench".into(),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let pool = std::sync::Arc::new(service.channels(32).await?);
    enqueue_users(&pool, 32, "bench", args.users, |i| format!("user-{i:08}")).await?;
    let fill = started.elapsed();

    let client = service.client().await?;
    let cpu_before = service.cpu_time()?;
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..args.in_flight {
        let mut client = client.clone();
        let batch_size = args.batch;
        callers.push(tokio::spawn(async move {
            let (mut admitted, mut token_bytes) = (0usize, 0usize);
            loop {
                let batch = client
                    .admit_batch(pb::AdmitBatchRequest {
                        queue_id: "bench".into(),
                        max_count: batch_size,
                        request_id: String::new(),
                    })
                    .await?
                    .into_inner()
                    .admitted;
                admitted += batch.len();
                token_bytes += batch
                    .iter()
                    .map(|a| a.admission.as_ref().map_or(0, |a| a.token.len()))
                    .sum::<usize>();
                if batch.len() < batch_size as usize {
                    return anyhow::Ok((admitted, token_bytes));
                }
            }
        }));
    }
    let (mut admitted, mut token_bytes) = (0usize, 0usize);
    for caller in callers {
        let (a, t) = caller.await??;
        admitted += a;
        token_bytes += t;
    }
    let admit_elapsed = started.elapsed();
    let admit_cpu = service.cpu_time()? - cpu_before;
    anyhow::ensure!(
        admitted == args.users,
        "admitted {admitted} of {}",
        args.users
    );
    let admit_rate = admitted as f64 / admit_elapsed.as_secs_f64();
    let admit_per_cpu = admitted as f64 / admit_cpu.as_secs_f64().max(0.01);

    let (raw_rate, token_rate) = signing_rates(args.users.min(50_000))?;

    println!(
        "scenario          admit (store: {:?}, batch {}, {} in flight)",
        args.store, args.batch, args.in_flight
    );
    println!("users             {}", args.users);
    println!(
        "queue filled in   {:.2} s ({:.0} enqueues/s, 32 clients)",
        fill.as_secs_f64(),
        args.users as f64 / fill.as_secs_f64()
    );
    println!(
        "admitted in       {:.2} s, mean token {} bytes",
        admit_elapsed.as_secs_f64(),
        token_bytes / admitted.max(1)
    );
    println!("admission rate    {admit_rate:.0} users/s of wall time (tokens included)");
    println!(
        "service CPU       {:.2} s: {admit_per_cpu:.0} users per CPU-second",
        admit_cpu.as_secs_f64()
    );
    println!(
        "service RSS       {:.1} MiB after admitting",
        service.rss_bytes()? as f64 / 1048576.0
    );
    println!("raw Ed25519 sign  {raw_rate:.0} signatures per CPU-second (one core)");
    println!(
        "token signing     {token_rate:.0} tokens per CPU-second (claims, JSON, base64, signature)"
    );
    println!(
        "ratio             {:.2} admissions per CPU-second / raw signatures per CPU-second",
        admit_per_cpu / raw_rate
    );
    println!(
        "                  {:.2} wall-time admission rate / raw one-core signing rate",
        admit_rate / raw_rate
    );
    Ok(())
}

/// Signatures per second of bare Ed25519 over a token-sized message, and of
/// whole tokens as the service makes them; each on one core.
fn signing_rates(count: usize) -> anyhow::Result<(f64, f64)> {
    let key = SigningKey::from_bytes(&[42; 32]);
    let message = [7u8; 260];
    let started = Instant::now();
    let mut sink = 0u8;
    for i in 0..count {
        let mut m = message;
        m[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sink ^= key.sign(&m).to_bytes()[0];
    }
    let raw = count as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(sink);

    let keyring = Keyring::generate("waitroom").map_err(anyhow::Error::msg)?;
    let queue = QueueId::parse("bench").map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    for i in 0..count {
        let user = UserId::parse(&format!("user-{i:08}")).map_err(anyhow::Error::msg)?;
        let admission = Admission {
            ticket: i as u64 + 1,
            admitted_at_ms: 1_800_000_000_000,
            expires_at_ms: 1_800_000_600_000,
            queue_epoch_ms: 1_700_000_000_000,
        };
        let claims = AdmissionClaims::new("waitroom", &queue, &user, &admission);
        std::hint::black_box(keyring.sign(&claims).map_err(anyhow::Error::msg)?);
    }
    let tokens = count as f64 / started.elapsed().as_secs_f64();
    Ok((raw, tokens))
}
