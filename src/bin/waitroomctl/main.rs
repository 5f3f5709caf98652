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
struct Connection {
    /// The service's gRPC address (https:// for TLS).
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
    /// Admit the next N users of a queue now.
    Admit {
        queue: String,
        count: u32,
        /// Makes a retry return the first result instead of admitting more;
        /// one is made up when not given, and shown if the call fails.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Put a user in line (or show the place they hold).
    /// Admits named users now, out of turn (waiting, pre-queued or not in
    /// line at all).
    AdmitUsers {
        queue: String,
        #[arg(required = true)]
        users: Vec<String>,
        /// Makes a retry safe: the same id returns the first result.
        #[arg(long)]
        request_id: Option<String>,
        /// Admit even when max_active is reached (operator key only).
        #[arg(long)]
        override_capacity: bool,
    },
    /// Sets the notice shown to everyone in line; an empty text clears it.
    Notice {
        queue: String,
        text: String,
    },
    /// Ends a sale: closes the queue with a reason shown to everyone in it.
    Close {
        queue: String,
        /// SOLD_OUT, CANCELLED, or your own (A-Z, 0-9, _).
        #[arg(long, default_value = "SOLD_OUT")]
        reason: String,
    },
    /// Closes the queue and takes everyone out of line (admissions given
    /// stand).
    Clear {
        queue: String,
        #[arg(long, default_value = "CANCELLED")]
        reason: String,
        /// Confirms: everyone waiting loses their place.
        #[arg(long)]
        yes: bool,
    },
    /// A live view of every queue, refreshed each interval.
    Top {
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    Enqueue {
        queue: String,
        user: String,
    },
    /// Follow a user's place live until admitted.
    Watch {
        queue: String,
        user: String,
    },
    /// Check an admission token.
    Verify {
        queue: String,
        token: String,
        /// Accept the token only once.
        #[arg(long)]
        consume: bool,
    },
    /// Readiness of the service (or liveness with --service "").
    Health {
        #[arg(long, default_value = "waitroom.v1.QueueService")]
        service: String,
    },
    /// Wait, then exit: a preStop hook for images without a shell, giving
    /// endpoint removal time to reach the load balancers.
    Sleep {
        #[arg(value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create a queue.
    Create {
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Show a queue's settings.
    Get { id: String },
    /// List all queues.
    List,
    /// Change the settings given, and only those.
    Update {
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a queue with everyone in it.
    Delete { id: String },
    /// Flip a queue's mode: the on/off switch.
    Mode { id: String, mode: Mode },
    /// A queue's figures.
    Stats { id: String },
}

#[derive(Args, Default)]
pub struct Settings {
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
    /// Scheduled opening, RFC 3339 (e.g. 2026-12-01T18:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    opens_at: Option<std::time::SystemTime>,
    /// How long before the opening users may pre-queue (e.g. 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    prequeue_window: Option<std::time::Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Queueing,
    PassThrough,
    Paused,
    Closed,
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
    let mut endpoint = Channel::from_shared(connection.addr.clone())
        .map_err(|e| Failure::new(2, format!("--addr: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if connection.addr.starts_with("https://") || connection.ca_cert.is_some() {
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
