use clap::Parser;
use waitroom::config::Config;
use waitroom::startup::{Application, shutdown_signal};
use waitroom::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    let result = app.run_until_stopped(shutdown_signal()).await;
    telemetry.flush();
    result
}
