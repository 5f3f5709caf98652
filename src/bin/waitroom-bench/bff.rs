//! Load through the reference BFF (`examples/bff`): many open waiting pages
//! (each an HTTP/1.1 Server-Sent Events connection of its own, as browsers
//! hold them) through one BFF process in front of one waitroom process.
//! Reports the BFF's memory per open page, its gRPC connections to
//! waitroom, and the time from an admission to the page's event saying the
//! line moved. Build the example first:
//! `cargo build --release --example bff --features testkit`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::testkit::free_port;

use crate::harness::{Service, Store, enqueue_users, spread};
use crate::watch::Round;

#[derive(clap::Args)]
pub struct Args {
    /// Open waiting pages.
    #[arg(long, default_value_t = 10_000)]
    pages: usize,
    /// The BFF's HTTP/2 connections to waitroom.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Admissions, each moving every page up one place.
    #[arg(long, default_value_t = 10)]
    admissions: usize,
}

struct Bff {
    child: Child,
    port: u16,
}

impl Drop for Bff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bff {
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
            .parse()?;
        Ok(kib * 1024)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let http = free_port().map_err(anyhow::Error::msg)?;
    let http_listen = format!("127.0.0.1:{http}");
    let service = Service::start(
        Store::Redis,
        &[
            "--max-streams",
            "1000000",
            "--max-calls",
            "1000000",
            "--http-listen",
            &http_listen,
            // Every move sent at once, so each admission is timed to every
            // page (paced, a position reaches a page within a second).
            "--position-pace",
            "0s",
        ],
    )
    .await?;
    service
        .create_queue(pb::Queue {
            id: "sale".into(),
            ..Default::default()
        })
        .await?;
    let channels = Arc::new(service.channels(4).await?);
    enqueue_users(&channels, 64, "sale", args.admissions, |n| {
        format!("ahead-{n:07}")
    })
    .await?;

    let binary = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("examples").join("bff"))
        .ok_or_else(|| anyhow::anyhow!("no directory for the bff example"))?;
    let port = free_port().map_err(anyhow::Error::msg)?;
    let child = Command::new(&binary)
        .args(["--waitroom", &format!("http://{}", service.addr)])
        .args([
            "--jwks-url",
            &format!("http://{http_listen}/.well-known/jwks.json"),
        ])
        .args(["--queue", "sale", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--connections", &args.connections.to_string()])
        .args([
            "--joins-per-minute",
            "100000000",
            "--streams-per-client",
            "100000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "starting {} ({e}): cargo build --release --example bff --features testkit",
                binary.display()
            )
        })?;
    let bff = Bff { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", bff.port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the bff did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every page joins (a visit of /wait gives it its visitor cookie).
    let cookies: Arc<Vec<std::sync::Mutex<String>>> = Arc::new(
        (0..args.pages)
            .map(|_| std::sync::Mutex::default())
            .collect(),
    );
    let jar = Arc::clone(&cookies);
    spread(64, args.pages, move |n| {
        let jar = Arc::clone(&jar);
        async move {
            let head = request(port, "/wait", None).await?;
            let cookie = head
                .lines()
                .find_map(|l| l.strip_prefix("set-cookie: "))
                .and_then(|c| c.split(';').next())
                .ok_or_else(|| anyhow::anyhow!("no visitor cookie"))?;
            *jar[n].lock().unwrap_or_else(|e| e.into_inner()) = cookie.to_owned();
            Ok(())
        }
    })
    .await?;
    let rss_before = bff.rss_bytes()?;

    // Every page opens its events.
    let base = Instant::now();
    let round = Arc::new(Round::new(args.pages));
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for page in 0..args.pages {
        let cookie = cookies[page]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (round, opened) = (Arc::clone(&round), Arc::clone(&opened));
        tokio::spawn(async move {
            let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let ask = format!("GET /events HTTP/1.1\r\nHost: bff\r\nCookie: {cookie}\r\n\r\n");
            if tcp.write_all(ask.as_bytes()).await.is_err() {
                return;
            }
            let mut buffer = vec![0u8; 4096];
            let mut tail = String::new();
            let mut last = u64::MAX;
            loop {
                let Ok(n) = tcp.read(&mut buffer).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                tail.push_str(&String::from_utf8_lossy(&buffer[..n]));
                for position in positions(&tail) {
                    if last == u64::MAX {
                        opened.fetch_add(1, Ordering::Relaxed);
                    } else if position < last {
                        round.arrived(page, base.elapsed().as_micros() as u64);
                    }
                    last = last.min(position);
                }
                // Keep only what may hold an event cut in two.
                if let Some(cut) = tail.rfind("\n\n") {
                    tail.drain(..cut);
                }
            }
        });
    }
    while opened.load(Ordering::Relaxed) < args.pages as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {} pages got their first event",
            opened.load(Ordering::Relaxed),
            args.pages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = bff.rss_bytes()?;
    let grpc_connections = established_to(service.addr.port(), bff.child.id())?;

    let admitter = QueueServiceClient::new(channels[0].clone());
    let (latency, delivered) = round
        .time_admissions(
            admitter,
            "sale",
            args.admissions,
            base,
            Duration::from_secs(10),
        )
        .await?;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario           bff ({} pages through one BFF, {} gRPC connections configured)",
        args.pages, args.connections
    );
    println!("pages opened in    {:.1} s", open_time.as_secs_f64());
    println!(
        "bff memory         {:.0} bytes per open page (RSS {:.1} -> {:.1} MiB)",
        rss_after.saturating_sub(rss_before) as f64 / args.pages as f64,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    println!("grpc connections   {grpc_connections} from the BFF to waitroom");
    println!(
        "admission to page  {delivered} of {} page events: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        args.pages * args.admissions,
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    Ok(())
}

/// The positions the events in `text` carry, in order.
fn positions(text: &str) -> Vec<u64> {
    text.match_indices("\"position\":")
        .filter_map(|(i, key)| {
            let digits: String = text[i + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// One HTTP/1.1 request; the response's head, lower-cased names.
async fn request(port: u16, path: &str, cookie: Option<&str>) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let ask = format!("GET {path} HTTP/1.1\r\nHost: bff\r\n{cookie}Connection: close\r\n\r\n");
    tcp.write_all(ask.as_bytes()).await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    Ok(head.replace("\r\n", "\n").to_lowercase())
}

/// TCP connections of process `pid` to local port `port`, from its own
/// view of /proc.
fn established_to(port: u16, pid: u32) -> anyhow::Result<usize> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let wanted = format!("{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[3] == "01"
                && fields[2].rsplit(':').next() == Some(wanted.as_str())
                && inodes.contains(fields[9])
        })
        .count())
}
