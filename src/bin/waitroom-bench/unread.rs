//! A client that opens thousands of `WatchRank` streams and stops reading:
//! the service's memory while the line moves under them, and when it lets
//! them go (`--stall-timeout`).
//!
//! - `streams`: the client reads its socket but none of the streams (a
//!   16-byte stream window, never opened further), so each stream's next
//!   message waits behind flow control.
//! - `socket`: the client stops reading its socket altogether, with
//!   windows so large that flow control never holds the server back: what
//!   the streams send piles up until the socket takes no more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tonic::transport::Channel;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::harness::{Service, Store, enqueue_users};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Deafness {
    Streams,
    Socket,
}

#[derive(clap::Args)]
pub struct Args {
    /// Streams the client opens and does not read.
    #[arg(long, default_value_t = 5_000)]
    streams: usize,
    /// What the client stops reading.
    #[arg(long, value_enum, default_value_t = Deafness::Streams)]
    deaf: Deafness,
    /// The service's --stall-timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stall: Duration,
    /// How long the line moves under the streams.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let stall = humantime::format_duration(args.stall).to_string();
    // Keepalive off: the stall alone lets the client go.
    let service = Service::start(
        Store::Memory,
        &["--stall-timeout", &stall, "--keepalive-interval", "1h"],
    )
    .await?;
    service
        .create_queue(pb::Queue {
            id: "deaf".into(),
            ..Default::default()
        })
        .await?;
    let channels = Arc::new(service.channels(4).await?);
    enqueue_users(&channels, 64, "deaf", args.streams, |n| format!("u{n:06}")).await?;
    let baseline = service.rss_bytes()?;

    let paused = Arc::new(AtomicBool::new(false));
    let deaf = match args.deaf {
        Deafness::Streams => {
            Channel::from_shared(format!("http://{}", service.addr))?
                .initial_stream_window_size(Some(16))
                .connect()
                .await?
        }
        Deafness::Socket => {
            let proxy = deaf_proxy(service.addr, Arc::clone(&paused)).await?;
            Channel::from_shared(format!("http://{proxy}"))?
                .initial_stream_window_size(Some(1 << 24))
                .initial_connection_window_size(Some((1 << 31) - 1))
                .connect()
                .await?
        }
    };
    let mut opening = tokio::task::JoinSet::new();
    for n in 0..args.streams {
        let mut client = QueueServiceClient::new(deaf.clone());
        opening.spawn(async move {
            client
                .watch_rank(pb::WatchRankRequest {
                    queue_id: "deaf".into(),
                    user_id: format!("u{n:06}"),
                    receipt: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut held = Vec::with_capacity(args.streams);
    while let Some(opened) = opening.join_next().await {
        held.push(opened??);
    }
    paused.store(true, Ordering::Relaxed);
    let opened = service.rss_bytes()?;

    println!(
        "scenario           unread ({} streams, the client stops reading its {}, stall timeout {stall}, the line moving for {} s)",
        args.streams,
        match args.deaf {
            Deafness::Streams => "streams",
            Deafness::Socket => "socket",
        },
        args.seconds
    );
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "rss                {:.1} MiB before, {:.1} MiB with the streams open ({:.1} KiB a stream)",
        mib(baseline),
        mib(opened),
        opened.saturating_sub(baseline) as f64 / 1024.0 / args.streams as f64
    );
    // The line moves: one admitted every 200 ms, so every stream has a new
    // position to be sent each refresh.
    let mut admin = QueueServiceClient::new(channels[0].clone());
    let started = Instant::now();
    let mut peak = opened;
    let mut let_go = None;
    let mut next_report = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        admin
            .admit_batch(pb::AdmitBatchRequest {
                queue_id: "deaf".into(),
                max_count: 1,
                ..Default::default()
            })
            .await?;
        let rss = service.rss_bytes()?;
        peak = peak.max(rss);
        let open = service
            .metric("waitroom_open_watchers")
            .await
            .unwrap_or(-1.0);
        if open == 0.0 && let_go.is_none() {
            let_go = Some(started.elapsed());
        }
        if started.elapsed() >= next_report {
            println!(
                "t={:>3} s           rss {:.1} MiB, {open} streams open",
                started.elapsed().as_secs(),
                mib(rss)
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stalled_streams = service
        .metric("waitroom_stalled_total{what=\"stream\"}")
        .await
        .unwrap_or(0.0);
    let stalled_connections = service
        .metric("waitroom_stalled_total{what=\"connection\"}")
        .await
        .unwrap_or(0.0);
    println!(
        "let go             {} ({stalled_streams} streams ended unread, {stalled_connections} connections closed)",
        match let_go {
            Some(at) => format!(
                "every stream {:.1} s after the line began to move",
                at.as_secs_f64()
            ),
            None => "not within the run".into(),
        }
    );
    println!(
        "rss                peak {:.1} MiB ({:.1} KiB a stream over the baseline), {:.1} MiB at the end",
        mib(peak),
        peak.saturating_sub(baseline) as f64 / 1024.0 / args.streams as f64,
        mib(service.rss_bytes()?)
    );
    drop(held);
    Ok(())
}

/// A loopback proxy to `upstream` that, once `paused`, stops reading
/// what the service sends (its requests still go through): to the
/// service, a client that stopped reading its socket.
async fn deaf_proxy(
    upstream: std::net::SocketAddr,
    paused: Arc<AtomicBool>,
) -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let paused = Arc::clone(&paused);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while !paused.load(Ordering::Relaxed) {
                    match tokio::time::timeout(
                        Duration::from_millis(50),
                        server_read.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => {
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {}
                    }
                }
                // Deaf from now on, holding the socket open.
                std::future::pending::<()>().await;
                drop(server_read);
            });
        }
    });
    Ok(addr)
}
