//! Real parts for tests and benchmarks: a `redis-server` of its own on a
//! free loopback port, or a three-master Redis Cluster, stopped when
//! dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process on a free loopback port, with nothing saved to
/// disk. The binary is `$REDIS_SERVER` or `redis-server` on the `PATH`.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    /// The extra arguments it was started with, to restart it alike.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> Result<Self, String> {
        Self::start_on(free_port()?)
    }

    /// Starts a server on a given port (to bring back one that was stopped).
    pub fn start_on(port: u16) -> Result<Self, String> {
        Self::start_with(port, &[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("waitroom-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let child = Self::spawn(port, &dir, &extra)?;
        let server = Self {
            port,
            child,
            dir,
            extra,
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Result<Child, String> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start {binary:?} ({e}); install redis-server or set REDIS_SERVER")
            })
    }

    /// Kills the server (`SIGKILL`, nothing flushed) and starts it again on
    /// the same port, directory and arguments: with an AOF, what it had
    /// written there comes back.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = Self::spawn(self.port, &self.dir, &self.extra)?;
        self.wait_until_ready()
    }

    /// Stalls the server (`SIGSTOP`): its connections stay open and nothing
    /// is answered until [`RedisServer::resume`].
    pub fn pause(&self) -> Result<(), String> {
        signal(self.child.id(), "STOP")
    }

    /// Lets a paused server go on (`SIGCONT`).
    pub fn resume(&self) -> Result<(), String> {
        signal(self.child.id(), "CONT")
    }

    fn wait_until_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        loop {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not start", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many times the server has run `command` (lower case, as
    /// `INFO commandstats` names it: `evalsha`, `smembers`), 0 if never.
    pub fn calls(&self, command: &str) -> Result<u64, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut conn = client.get_connection().map_err(|e| e.to_string())?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        let prefix = format!("cmdstat_{command}:calls=");
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("kill -{name} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid} failed"))
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A Redis Cluster of three masters on loopback, each a `redis-server` of
/// its own, created with `redis-cli --cluster create`. Stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> Result<Self, String> {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (for failover tests).
    pub fn start_with_replicas(replicas: usize) -> Result<Self, String> {
        Self::start_sized(3, replicas)
    }

    /// `masters` masters (at least three), no replicas.
    pub fn start_masters(masters: usize) -> Result<Self, String> {
        Self::start_sized(masters.max(3), 0)
    }

    fn start_sized(masters: usize, replicas: usize) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for port in cluster_ports(masters * (1 + replicas))? {
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "5000",
                    // As a sale over sub-lines needs (docs/deploy.md): a
                    // master lost stops only its own slots while its
                    // replica takes over, not the whole cluster.
                    "--cluster-require-full-coverage",
                    "no",
                ],
            )?);
        }
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                format!("cannot run {cli:?} ({e}); install redis-tools or set REDIS_CLI")
            })?;
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        let cluster = Self { nodes };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn wait_until_ok(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            let client = redis::Client::open(node.url()).map_err(|e| e.to_string())?;
            loop {
                let info: Option<String> = client
                    .get_connection()
                    .ok()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok());
                if info.is_some_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("the cluster never became ok on port {}", node.port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The node serving `key`'s slot now.
    pub fn master_of(&self, key: &str) -> Result<u16, String> {
        Ok(self.slot_owner(key)?.0)
    }

    /// The node serving `key`'s slot now, and a replica of it once one has
    /// attached (waiting up to ten seconds for one).
    pub fn master_and_replica_of(&self, key: &str) -> Result<(u16, Option<u16>), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (master, replica) = self.slot_owner(key)?;
            if replica.is_some() || Instant::now() > deadline {
                return Ok((master, replica));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn slot_owner(&self, key: &str) -> Result<(u16, Option<u16>), String> {
        let query = |port: u16, cmd: &mut redis::Cmd| -> Result<redis::Value, String> {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .map_err(|e| e.to_string())?;
            let mut conn = client.get_connection().map_err(|e| e.to_string())?;
            cmd.query(&mut conn).map_err(|e| e.to_string())
        };
        let seed = self.nodes.first().ok_or("no nodes")?.port;
        let slot = match query(seed, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))? {
            redis::Value::Int(slot) => slot,
            other => return Err(format!("CLUSTER KEYSLOT answered {other:?}")),
        };
        let port_of = |addr: &str| {
            addr.split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        };
        let mut master = None;
        let mut replica = None;
        for node in &self.nodes {
            let info: String = match query(node.port, redis::cmd("CLUSTER").arg("NODES"))? {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                redis::Value::VerbatimString { text, .. } => text,
                other => return Err(format!("CLUSTER NODES answered {other:?}")),
            };
            // Lines: id addr flags master ping pong epoch state slots...
            let lines: Vec<Vec<&str>> = info.lines().map(|l| l.split(' ').collect()).collect();
            let owner = lines.iter().find(|f| {
                f.len() > 8
                    && f[2].contains("master")
                    && f[8..].iter().any(|range| {
                        let mut ends = range.split('-');
                        let lo = ends.next().and_then(|v| v.parse::<i64>().ok());
                        let hi = ends.next().and_then(|v| v.parse::<i64>().ok()).or(lo);
                        lo.zip(hi).is_some_and(|(lo, hi)| lo <= slot && slot <= hi)
                    })
            });
            let Some(owner) = owner else {
                continue;
            };
            master = master.or_else(|| port_of(owner[1]));
            replica = replica.or_else(|| {
                lines
                    .iter()
                    .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == owner[0])
                    .and_then(|f| port_of(f[1]))
            });
        }
        master
            .map(|m| (m, replica))
            .ok_or_else(|| format!("no master serves slot {slot}"))
    }

    /// The seed URLs, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Ports whose cluster bus ports (port + 10000) are free too.
fn cluster_ports(count: usize) -> Result<Vec<u16>, String> {
    // Clusters started at once in one process begin their search apart, so
    // they do not race for the same ports.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let offset = NEXT.fetch_add(50, std::sync::atomic::Ordering::Relaxed) % 5_000;
    let mut ports = Vec::new();
    let start = 20_000 + ((std::process::id() as u16 % 5_000) + offset) % 10_000;
    for port in (start..30_000).chain(20_000..start) {
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) && !ports.contains(&port) {
            ports.push(port);
            if ports.len() == count {
                return Ok(ports);
            }
        }
    }
    Err("no free ports for a cluster".into())
}
