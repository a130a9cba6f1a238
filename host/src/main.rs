//! The `kairos` binary: parse the command, then telemetry → build → run → wait.

use clap::Parser;
use kairos::config::{Cli, Command, PluginCommand};
use kairos::plugin::PluginLimits;
use kairos::startup::{Application, shutdown_signal};
use std::process::ExitCode;

/// The delivery path allocates per event in many places (the plugin's
/// store and arguments, the request, the rows); profiling showed glibc's
/// malloc and free at ~15 % of the host's CPU under a backlog.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            kairos::telemetry::init(settings.log_format);
            let app = Application::build(*settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check {
            file,
            config,
            subjects,
            deadline,
            fuel,
            memory_mib,
        }) => {
            kairos::telemetry::init(kairos::config::LogFormat::Text);
            let limits = PluginLimits {
                deadline,
                fuel,
                memory: memory_mib << 20,
            };
            let outcome = tokio::task::spawn_blocking(move || {
                kairos::plugin_kit::check(&file, config.into_iter().collect(), &subjects, limits)
            })
            .await??;
            print!("{}", outcome.report);
            Ok(if outcome.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Simulate(args) => Ok(kairos::ahead_cli::simulate(&args).await),
        Command::Audit(args) => Ok(kairos::audit_cli::run(&args).await),
        Command::Plugin(PluginCommand::Diff {
            name,
            file,
            config,
            limit,
            url,
            token,
        }) => {
            let token = token.as_deref().filter(|t| !t.trim().is_empty());
            Ok(kairos::ahead_cli::diff(&name, &file, &config, limit, &url, token).await)
        }
        Command::Import(args) => {
            let token = args.token.as_deref().filter(|t| !t.trim().is_empty());
            Ok(kairos::import_cli::run(&args.file, &args.url, token).await)
        }
        Command::Plugin(PluginCommand::New {
            name,
            path,
            lang,
            sdk_path,
            sdk_git,
        }) => {
            use kairos::plugin_kit::{Lang, Sdk};
            let dir = path.unwrap_or_else(|| name.clone().into());
            let sdk = match (lang, sdk_path, sdk_git) {
                (Lang::Rust, _, Some(url)) => Some(Sdk::Git(url)),
                (Lang::Rust, Some(path), None) => Some(Sdk::Path(path)),
                (Lang::Rust, None, None) => Some(Sdk::from_source_tree()?),
                (_, None, None) => None,
                (_, _, _) => anyhow::bail!("--sdk-path and --sdk-git are for --lang rust"),
            };
            let files = kairos::plugin_kit::new_plugin(&name, &dir, lang, sdk.as_ref())?;
            for file in &files {
                println!("created {}", file.display());
            }
            println!(
                "\nnext:\n  cd {}\n{}",
                dir.display(),
                kairos::plugin_kit::next_steps(&name, lang)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
