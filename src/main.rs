use clap::Parser;
use mimalloc::MiMalloc;
use waitroom::config::Config;
use waitroom::startup::{Application, shutdown_signal};
use waitroom::telemetry;

/// With hundreds of thousands of streams opened in bursts, glibc's allocator
/// kept the memory of the burst; mimalloc returns it and packs small
/// per-stream objects tighter.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    let result = app.run_until_stopped(shutdown_signal()).await;
    telemetry.flush();
    result
}
