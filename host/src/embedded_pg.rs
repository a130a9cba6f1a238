//! The embedded default database: a private PostgreSQL cluster run from the
//! machine's own binaries in a directory kairos owns, kept between runs.
//! PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` user. It listens only on a Unix socket inside its directory.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The superuser and database the embedded cluster is created with.
const DB_USER: &str = "kairos";
const DB_NAME: &str = "kairos"; // also spelled out in `ensure_database`
const PORT: u16 = 5432;

/// A running cluster this process started (or found running) and will stop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<String>,
    stopped: bool,
}

impl EmbeddedPostgres {
    /// Initialises `dir` if it holds no cluster yet, then starts it.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let dir = absolute(dir)?;
        let data_dir = dir.join("data");
        let socket_dir = dir.join("run");
        let run_as = running_as_root().then(|| "postgres".to_string());
        let pg = Self {
            data_dir,
            socket_dir,
            run_as,
            stopped: false,
        };

        std::fs::create_dir_all(&pg.socket_dir)
            .with_context(|| format!("creating {}", pg.socket_dir.display()))?;
        if let Some(user) = &pg.run_as {
            // The cluster's user must reach its directories.
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:"), path_str(&dir)?])
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown of {} to {user} failed", dir.display());
            }
        }

        if !pg.data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %pg.data_dir.display(), "initialising the embedded PostgreSQL cluster");
            pg.run(
                "initdb",
                &[
                    "-D",
                    path_str(&pg.data_dir)?,
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
            )?;
        }
        if pg.is_running() {
            tracing::info!("the embedded PostgreSQL cluster is already running; using it");
        } else {
            let options = format!(
                "-c listen_addresses='' -k {} -p {PORT} -c max_connections=200 -c fsync=on",
                path_str(&pg.socket_dir)?
            );
            pg.run(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    path_str(&pg.data_dir)?,
                    "-l",
                    path_str(&dir.join("postgres.log"))?,
                    "-o",
                    &options,
                ],
            )
            .with_context(|| {
                format!(
                    "starting PostgreSQL; see {}",
                    dir.join("postgres.log").display()
                )
            })?;
        }
        Ok(pg)
    }

    /// A URL for a database of this cluster, over its Unix socket.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{DB_USER}@localhost:{PORT}/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// The URL of the `kairos` database, creating it if missing.
    pub async fn ensure_database(&self) -> anyhow::Result<String> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DB_NAME)
                .fetch_one(&mut admin)
                .await?;
        if !exists {
            sqlx::query(concat!("CREATE DATABASE ", "kairos"))
                .execute(&mut admin)
                .await?;
        }
        admin.close().await?;
        Ok(self.url(DB_NAME))
    }

    fn is_running(&self) -> bool {
        self.run(
            "pg_ctl",
            &["status", "-D", path_str(&self.data_dir).unwrap_or_default()],
        )
        .is_ok()
    }

    /// Stops the cluster (fast shutdown: open sessions are ended).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", path_str(&self.data_dir)?],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = &find_binary(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", program]);
                c
            }
            None => Command::new(program),
        };
        let output = command
            .args(args)
            .current_dir("/")
            .output()
            .with_context(|| {
                format!("running {program}: are the PostgreSQL binaries installed and on PATH?")
            })?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!(
                error = format!("{error:#}"),
                "stopping the embedded PostgreSQL cluster failed"
            );
        }
    }
}

/// A PostgreSQL program: on PATH, else the newest Debian-style
/// `/usr/lib/postgresql/N/bin`, where the `postgresql` package puts it.
fn find_binary(program: &str) -> String {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if on_path {
        return program.to_string();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin").join(program)))
        })
        .filter(|(_, path)| path.is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .and_then(|(_, path)| path.to_str().map(str::to_string))
        .unwrap_or_else(|| program.to_string())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::fs::canonicalize(dir)?)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path is not UTF-8: {}", path.display()))
}
