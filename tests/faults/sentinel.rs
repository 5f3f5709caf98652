//! Redis under Sentinel, with the service asking the Sentinels for the
//! master (`--redis-sentinel-master`): a master, a replica and a Sentinel,
//! real processes all. Failed over under traffic, the service follows the
//! master the Sentinel names: the demoted master's `READONLY` on the
//! still-open connection, or a dead master's silence, is a reason to ask
//! again, not an error to return forever.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use waitroom::testkit::{RedisServer, free_port};

use crate::failover::{
    cmd, info_replication, replica_has_everything, replica_link_up, until_joins_resume,
};
use crate::ledger;
use crate::service::{Service, queue, scratch};
use crate::wait::{until, wait_until};

const MASTER: &str = "sale-redis";

/// A `redis-server --sentinel` monitoring one master with a quorum of one.
struct Sentinel {
    port: u16,
    child: Child,
}

impl Sentinel {
    fn start(master_port: u16, dir: &Path) -> Self {
        let port = free_port().unwrap();
        let conf: PathBuf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(binary)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server --sentinel");
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ask(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
    }

    /// The port of the master it names now.
    fn master_port(&self) -> Option<u16> {
        let mut conn = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut conn)
            .ok()?;
        port.parse().ok()
    }

    /// Waits until it knows a replica it could promote.
    async fn wait_for_replica(&self) {
        wait_until(
            "the Sentinel sees the replica",
            Duration::from_secs(30),
            || {
                let seen = matches!(
                    self.ask(&["SENTINEL", "REPLICAS", MASTER]),
                    Ok(redis::Value::Array(replicas)) if !replicas.is_empty()
                );
                std::future::ready(seen)
            },
        )
        .await;
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_replica(server: &RedisServer) -> bool {
    match cmd(server, &["ROLE"]) {
        redis::Value::Array(role) => {
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"slave")
        }
        _ => false,
    }
}

/// What the Sentinel and the servers (the live ones) say, and what listens
/// on the loopback ports: for a failure's message.
fn servers(sentinel: &Sentinel, live: &[&RedisServer]) -> String {
    let mut said = format!(
        "the Sentinel names port {:?}; its master: {:?}; its replicas: {:?}",
        sentinel.master_port(),
        sentinel.ask(&["SENTINEL", "MASTER", MASTER]),
        sentinel.ask(&["SENTINEL", "REPLICAS", MASTER]),
    );
    for server in live {
        said.push_str(&format!(
            "; port {}: DBSIZE {:?}, {}",
            server.port,
            cmd(server, &["DBSIZE"]),
            info_replication(server).replace("\r\n", " ")
        ));
    }
    if let Ok(out) = Command::new("ss").args(["-ltnp"]).output() {
        said.push_str(&format!(
            "; listening: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    said
}

/// A master, its replica, a Sentinel watching them, and the service asking
/// the Sentinel.
async fn setup(name: &str) -> (RedisServer, RedisServer, Sentinel, Service) {
    // No wait before a replica's first sync (5 s by default). Writes need
    // a replica attached, so once its replica is promoted the old master
    // refuses writes (NOREPLICAS) rather than accept what will be lost.
    let master = RedisServer::start_with(
        free_port().unwrap(),
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "10",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let master_port = master.port.to_string();
    let replica = RedisServer::start_with(
        free_port().unwrap(),
        &["--replicaof", "127.0.0.1", &master_port],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until("replication started", Duration::from_secs(10), || {
        std::future::ready(replica_link_up(&replica))
    })
    .await;
    let dir = scratch(name);
    let sentinel = Sentinel::start(master.port, &dir);
    sentinel.wait_for_replica().await;
    // The first Sentinel listed takes connections and never answers (its
    // node is gone behind an address that still resolves): the others
    // must still be heard.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let service = Service::start(
        &format!("{silent_url},{}", sentinel.url()),
        name,
        &dir,
        &["--redis-sentinel-master", MASTER],
    )
    .await;
    service.create_queue(queue("sale")).await;
    (master, replica, sentinel, service)
}

/// A planned failover as an operator makes it under traffic: writes paused
/// on the master until the replica has all of them, then `SENTINEL
/// FAILOVER`, and the pause lifted once the replica is promoted (the old
/// master, set with `min-replicas-to-write 1`, then refuses writes until
/// the Sentinel demotes it). The
/// old master's `READONLY` (on the service's connection, or on the one it
/// makes again to the same address) sends the service back to the
/// Sentinel.
/// Nothing acknowledged is lost; nobody is admitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_sentinel_failover_under_traffic_loses_nothing() {
    let _serial = crate::one_at_a_time().await;
    let (master, replica, sentinel, service) = setup("sentinel-planned").await;
    let ledger = ledger::shared();
    let run = Duration::from_secs(4) * crate::scale() as u32;
    let (old_port, new_port) = (master.port, replica.port);
    let resumed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let noted = std::sync::Arc::clone(&resumed);
    let failover = async {
        tokio::time::sleep(run / 3).await;
        cmd(&master, &["CLIENT", "PAUSE", "10000", "WRITE"]);
        replica_has_everything(&master);
        sentinel
            .ask(&["SENTINEL", "FAILOVER", MASTER])
            .expect("SENTINEL FAILOVER");
        until("a failover", Duration::from_secs(20), || {
            std::future::ready(if sentinel.master_port() == Some(new_port) {
                Ok(())
            } else {
                Err(format!(
                    "the Sentinel names {:?}, the old master is a replica: {}",
                    sentinel.master_port(),
                    is_replica(&master)
                ))
            })
        })
        .await;
        // Writes held meanwhile find the replica gone and are refused;
        // then the Sentinel (its commands held by the pause too) demotes
        // the old master.
        cmd(&master, &["CLIENT", "UNPAUSE"]);
        wait_until("the old master demoted", Duration::from_secs(30), || {
            std::future::ready(is_replica(&master))
        })
        .await;
        let took = until_joins_resume(&service, &ledger, Duration::from_secs(10), || {
            servers(&sentinel, &[&master, &replica])
        })
        .await;
        *noted.lock().unwrap() = Some(took);
    };
    ledger::traffic(
        vec![service.client()],
        vec![service.client()],
        &ledger,
        run,
        10,
        failover,
    )
    .await;
    assert_eq!(sentinel.master_port(), Some(new_port), "from {old_port}");
    let resumed = resumed.lock().unwrap().expect("the failover happened");
    println!(
        "planned Sentinel failover under traffic: joins acknowledged again {resumed:?} after the old master was demoted"
    );
    // The writes went to the new master.
    let waiting = cmd(&replica, &["ZCARD", "sentinel-planned:{sale}:waiting"]);
    assert!(
        matches!(waiting, redis::Value::Int(n) if n > 0),
        "{waiting:?}"
    );
    let mut client = service.client();
    ledger::drain(&mut client, &ledger, "sale", "sentinel-planned").await;
    let ledger = ledger.lock().unwrap();
    ledger.assert_nobody_admitted_twice();
    ledger.assert_admitted_in_ticket_order();
    ledger.assert_every_acknowledged_admitted();
}

/// The master dies: the Sentinel promotes the replica after its
/// down-after time, and the service, whose calls to the dead master go
/// unanswered, asks again and writes to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_is_replaced_by_the_one_the_sentinel_promotes() {
    let _serial = crate::one_at_a_time().await;
    let (mut master, replica, sentinel, service) = setup("sentinel-killed").await;
    let ledger = ledger::shared();
    let mut client = service.client();
    for n in 0..20 {
        ledger::enqueue(
            &mut client,
            &ledger,
            "sale",
            &format!("before-{n}"),
            Duration::from_secs(3),
        )
        .await;
    }
    replica_has_everything(&master);
    master.stop();
    let killed = Instant::now();
    let resumed = until_joins_resume(&service, &ledger, Duration::from_secs(30), || {
        servers(&sentinel, &[&replica])
    })
    .await;
    let promoted = sentinel.master_port();
    println!(
        "master killed: the Sentinel promoted the replica and joins were acknowledged again {resumed:?} after the kill (down-after 1 s)"
    );
    assert_eq!(promoted, Some(replica.port));
    assert!(killed.elapsed() >= Duration::from_secs(1));
    let mut client = service.client();
    ledger::drain(&mut client, &ledger, "sale", "sentinel-killed").await;
    let ledger = ledger.lock().unwrap();
    ledger.assert_nobody_admitted_twice();
    ledger.assert_every_acknowledged_admitted();
}
