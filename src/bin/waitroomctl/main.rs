//! `waitroomctl`: the operator's command line for waitroom.
//!
//! ```sh
//! waitroomctl queue create sale --max-active 500 --admit-per-second 50
//! waitroomctl queue mode sale closed
//! waitroomctl queue stats sale --output json
//! waitroomctl admit sale 100
//! waitroomctl admit-users sale alice bob --request-id desk-42
//! waitroomctl notice sale "Sales resume at 10:30"
//! waitroomctl close sale --reason SOLD_OUT
//! waitroomctl clear sale --reason CANCELLED --yes
//! waitroomctl top
//! waitroomctl watch sale alice
//! waitroomctl verify sale "$TOKEN" --consume
//! waitroomctl health
//! ```
//!
//! Exit codes, for scripts: 0 done; 1 another error; 2 bad usage; 3 not
//! found; 4 refused (invalid argument, failed precondition, already
//! exists); 5 unavailable (unreachable, or its store is down); 6 not
//! authenticated or not permitted; 7 a token that is not valid, or a
//! service that is not serving.
//!
//! Layout: this file holds the command line (its flags, help and exit
//! codes); `commands.rs` what each command does, `output.rs` answers as
//! tables or JSON, `top.rs` the live view of every queue.

mod commands;
mod output;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Parser)]
#[command(name = "waitroomctl", version, about = "Operate waitroom queues", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output for people (table) or for scripts (json).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table, env = "WAITROOMCTL_OUTPUT")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 done, 1 other error, 2 bad usage, 3 not found, 4 refused, \
5 unavailable, 6 not authenticated or permitted, 7 token not valid or service not serving.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
#[command(next_help_heading = "Connection")]
struct Connection {
    /// The service's gRPC address: host:port, or a URL (https:// for TLS).
    #[arg(
        long,
        global = true,
        env = "WAITROOM_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// API key, sent as `authorization: Bearer`.
    #[arg(long, global = true, env = "WAITROOM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key (first line).
    #[arg(
        long,
        global = true,
        env = "WAITROOM_API_KEY_FILE",
        conflicts_with = "api_key"
    )]
    api_key_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the service's TLS certificate.
    #[arg(long, global = true, env = "WAITROOM_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "WAITROOM_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "WAITROOM_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Name the service's certificate is checked against (default: the host of --addr).
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create, read, change and delete queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Admit the next N users of a queue now, in ticket order.
    #[command(
        after_help = "Example:\n  waitroomctl admit sale 100\n  waitroomctl admit sale 100 --request-id desk-42   # a retry returns the first result"
    )]
    Admit {
        /// The queue's id.
        queue: String,
        /// How many to admit (fewer when fewer wait, or max_active is reached).
        count: u32,
        /// Makes a retry return the first result instead of admitting more;
        /// one is made up when not given, and shown if the call fails.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Admit named users now, out of turn (waiting, pre-queued or not in
    /// line at all): for a help desk, or a token to test a booking service
    /// with.
    #[command(
        after_help = "Example:\n  waitroomctl admit-users sale alice bob --request-id desk-42\n  waitroomctl --output json admit-users sale tester   # a token for a booking service's tests"
    )]
    AdmitUsers {
        /// The queue's id.
        queue: String,
        /// The users' ids.
        #[arg(required = true)]
        users: Vec<String>,
        /// Makes a retry safe: the same id returns the first result.
        #[arg(long)]
        request_id: Option<String>,
        /// Admit even when max_active is reached (operator key only).
        #[arg(long)]
        override_capacity: bool,
    },
    /// Set the notice shown to everyone in line; an empty text clears it.
    #[command(
        after_help = "Example:\n  waitroomctl notice sale \"Sales resume at 10:30\"\n  waitroomctl notice sale \"\"   # clears it"
    )]
    Notice {
        /// The queue's id.
        queue: String,
        /// At most 280 characters, shown as text.
        text: String,
    },
    /// End a sale: close the queue with a reason shown to everyone in it.
    #[command(after_help = "Example:\n  waitroomctl close sale --reason SOLD_OUT")]
    Close {
        /// The queue's id.
        queue: String,
        /// SOLD_OUT, CANCELLED, or your own (A-Z, 0-9, _).
        #[arg(long, default_value = "SOLD_OUT")]
        reason: String,
    },
    /// Close the queue and take everyone out of line (admissions given
    /// stand).
    #[command(after_help = "Example:\n  waitroomctl clear sale --reason CANCELLED --yes")]
    Clear {
        /// The queue's id.
        queue: String,
        /// SOLD_OUT, CANCELLED, or your own (A-Z, 0-9, _).
        #[arg(long, default_value = "CANCELLED")]
        reason: String,
        /// Confirms: everyone waiting loses their place.
        #[arg(long)]
        yes: bool,
    },
    /// A live view of every queue, refreshed each interval.
    #[command(after_help = "Example:\n  waitroomctl top --interval 2s")]
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Put a user in line, or show the place they hold: to try a queue by
    /// hand.
    #[command(after_help = "Example:\n  waitroomctl enqueue sale alice")]
    Enqueue {
        /// The queue's id.
        queue: String,
        /// The user's id.
        user: String,
    },
    /// Follow a user's place live until admitted.
    #[command(after_help = "Example:\n  waitroomctl watch sale alice")]
    Watch {
        /// The queue's id.
        queue: String,
        /// The user's id.
        user: String,
    },
    /// Check an admission token.
    #[command(after_help = "Example:\n  waitroomctl verify sale \"$TOKEN\" --consume")]
    Verify {
        /// The queue's id (the token's audience).
        queue: String,
        /// The admission token (a JWT).
        token: String,
        /// Accept the token only once.
        #[arg(long)]
        consume: bool,
    },
    /// Readiness of the service (or liveness with --service "").
    #[command(after_help = "Example:\n  waitroomctl health && echo ready")]
    Health {
        /// The health service name asked about.
        #[arg(long, default_value = "waitroom.v1.QueueService")]
        service: String,
    },
    /// Wait, then exit: a preStop hook for images without a shell, giving
    /// endpoint removal time to reach the load balancers.
    #[command(after_help = "Example:\n  waitroomctl sleep 5s")]
    Sleep {
        /// How long (e.g. 5s).
        #[arg(value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  waitroomctl completion bash > /etc/bash_completion.d/waitroomctl\n  waitroomctl completion zsh > \"${fpath[1]}/_waitroomctl\"\n  waitroomctl completion fish > ~/.config/fish/completions/waitroomctl.fish"
    )]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create a queue.
    #[command(
        after_help = "Example:\n  waitroomctl queue create sale --max-active 500 --admit-per-second 50\n  waitroomctl queue create launch --opens-at 2027-01-01T18:00:00+01:00 --prequeue-window 1h"
    )]
    Create {
        /// The queue's id (letters, digits, - and _).
        id: String,
        /// Sub-lines to spread the line over, 1 to 16, fixed for the queue's life: more than 1 only for a sale beyond one Redis core (docs/deploy.md); the Redis store serves 1 only so far.
        #[arg(long)]
        shards: Option<u32>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Show a queue's settings.
    #[command(after_help = "Example:\n  waitroomctl queue get sale")]
    Get {
        /// The queue's id.
        id: String,
    },
    /// List all queues.
    #[command(after_help = "Example:\n  waitroomctl queue list --output json")]
    List,
    /// Change the settings given, and only those.
    #[command(after_help = "Example:\n  waitroomctl queue update sale --admit-per-second 80")]
    Update {
        /// The queue's id.
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a queue; with people in it, only with --yes.
    #[command(after_help = "Example:\n  waitroomctl queue delete sale --yes")]
    Delete {
        /// The queue's id.
        id: String,
        /// Confirms: everyone waiting, pre-queued or admitted loses their place.
        #[arg(long)]
        yes: bool,
    },
    /// Flip a queue's mode: the on/off switch.
    #[command(
        after_help = "Example:\n  waitroomctl queue mode sale paused\n  waitroomctl queue mode sale pass_through   # the queue is off: everyone is let straight in"
    )]
    Mode {
        /// The queue's id.
        id: String,
        /// The mode to set.
        mode: Mode,
    },
    /// A queue's figures.
    #[command(after_help = "Example:\n  waitroomctl queue stats sale")]
    Stats {
        /// The queue's id.
        id: String,
    },
}

#[derive(Args, Default)]
#[command(next_help_heading = "Queue settings")]
pub struct Settings {
    /// queueing (the line), pass_through (everyone straight in), paused (nobody admitted, joins go on) or closed.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Most users admitted at once; 0 for no cap.
    #[arg(long)]
    max_active: Option<u32>,
    /// Users admitted per second automatically; 0 for manual admission only.
    #[arg(long)]
    admit_per_second: Option<u32>,
    /// How long an admission lasts (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    admission_ttl: Option<std::time::Duration>,
    /// How long a waiting user keeps a place without a sign of life (e.g. 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_timeout: Option<std::time::Duration>,
    /// Scheduled opening, RFC 3339 (e.g. 2026-12-01T18:00:00Z or 2026-12-01T19:00:00+01:00).
    #[arg(long, value_parser = rfc3339)]
    opens_at: Option<std::time::SystemTime>,
    /// How long before the opening users may pre-queue (e.g. 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    prequeue_window: Option<std::time::Duration>,
}

/// Spelled as the service's `--queue` spells them; `pass-through` is
/// still taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Queueing,
    #[value(name = "pass_through", alias = "pass-through")]
    PassThrough,
    Paused,
    Closed,
}

/// A time in RFC 3339, with `Z` or an offset (`+01:00`).
fn rfc3339(text: &str) -> Result<std::time::SystemTime, String> {
    let bad = || {
        format!(
            "{text:?} is not an RFC 3339 time (e.g. 2026-12-01T18:00:00Z or 2026-12-01T19:00:00+01:00)"
        )
    };
    let (local, offset_s) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((local, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = offset[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = offset[4..6].parse().map_err(|_| bad())?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (local, sign * (hours * 3600 + minutes * 60))
        }
        _ => (text.strip_suffix('Z').unwrap_or(text), 0),
    };
    let utc_as_written = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    // The offset says how far ahead of UTC the written time is.
    let shift = std::time::Duration::from_secs(offset_s.unsigned_abs());
    if offset_s >= 0 {
        utc_as_written.checked_sub(shift)
    } else {
        utc_as_written.checked_add(shift)
    }
    .ok_or_else(bad)
}

/// A failure with the exit code scripts rely on.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Adds what the operator can do about it.
    pub fn add_hint(&mut self, hint: impl std::fmt::Display) {
        self.message = format!("{}; {hint}", self.message);
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::NotFound => 3,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => 4,
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 5,
            Code::Unauthenticated | Code::PermissionDenied => 6,
            _ => 1,
        };
        Failure::new(code, format!("{:?}: {}", status.code(), status.message()))
    }
}

impl From<tonic::transport::Error> for Failure {
    fn from(error: tonic::transport::Error) -> Self {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Failure::new(5, format!("cannot reach the service: {message}"))
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::new(1, error.to_string())
    }
}

/// A connected channel and the metadata every call carries.
pub struct Client {
    pub channel: Channel,
    api_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// Every queue, in id order, page after page.
    pub async fn list_all(
        &self,
        admin: &mut waitroom::pb::queue_admin_service_client::QueueAdminServiceClient<Channel>,
    ) -> Result<Vec<waitroom::pb::Queue>, Failure> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = admin
                .list_queues(self.request(waitroom::pb::ListQueuesRequest {
                    page_size: 1000,
                    page_token,
                }))
                .await?
                .into_inner();
            all.extend(page.queues);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// A request carrying the API key, if any.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("authorization", key.clone());
        }
        request
    }
}

async fn connect(connection: &Connection) -> Result<Client, Failure> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| Failure::new(1, format!("reading {}: {e}", path.display())))
    };
    // host:port means plain HTTP/2, as the default does.
    let addr = match connection.addr.contains("://") {
        true => connection.addr.clone(),
        false => format!("http://{}", connection.addr),
    };
    let mut endpoint = Channel::from_shared(addr.clone())
        .map_err(|e| Failure::new(2, format!("--addr {:?}: {e}", connection.addr)))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if addr.starts_with("https://") || connection.ca_cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &connection.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&connection.client_cert, &connection.client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &connection.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let api_key = match (&connection.api_key, &connection.api_key_file) {
        (Some(key), _) => Some(key.clone()),
        (None, Some(path)) => {
            let text = String::from_utf8(read(path)?)
                .map_err(|_| Failure::new(1, format!("{}: not UTF-8", path.display())))?;
            text.lines().next().map(|l| l.trim().to_owned())
        }
        (None, None) => None,
    };
    let api_key = api_key
        .map(|key| {
            format!("Bearer {key}")
                .parse()
                .map_err(|_| Failure::new(2, "the API key has characters a header cannot carry"))
        })
        .transpose()?;
    Ok(Client {
        channel: endpoint.connect().await?,
        api_key,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Sleep { duration } = cli.command {
        tokio::time::sleep(duration).await;
        return ExitCode::SUCCESS;
    }
    if let Command::Completion { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "waitroomctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let result = match connect(&cli.connection).await {
        Ok(client) => commands::run(&client, cli.command, cli.output).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("waitroomctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
