//! The `kairos` binary: parse the command, then telemetry → build → run → wait.

use clap::Parser;
use kairos::config::{Cli, Command};
use kairos::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            kairos::telemetry::init(settings.log_format);
            let app = Application::build(*settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
    }
}
