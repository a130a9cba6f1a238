//! The embedded default database: a private PostgreSQL cluster run from the
//! machine's own binaries in a directory kairos owns, kept between runs.
//! PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` user. It listens only on a Unix socket in a directory only that
//! user can enter, and asks for a password kairos generated and keeps there.

use anyhow::{Context, bail};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The superuser and database the embedded cluster is created with.
const DB_USER: &str = "kairos";
const DB_NAME: &str = "kairos"; // also spelled out in `ensure_database`
const PORT: u16 = 5432;

/// The whole `pg_hba.conf`, rewritten on every start: password logins over
/// the Unix socket, nothing over TCP.
const PG_HBA: &str = "\
# Written by kairos on every start; edits here are overwritten.
# TYPE  DATABASE  USER  METHOD
local   all       all   scram-sha-256
";

/// A running cluster this process started (or found running) and will stop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// `<dir>/password`: the superuser's password, kept so later runs can log in.
    password_file: PathBuf,
    password: Password,
    run_as: Option<String>,
    stopped: bool,
}

/// The superuser's password: lowercase hex, so it needs no escaping in a URL
/// or an SQL string literal. Its `Debug` does not show it.
struct Password(String);

impl Password {
    fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl EmbeddedPostgres {
    /// Initialises `dir` if it holds no cluster yet, gives a cluster made by
    /// an earlier kairos (no password) a password, then starts it.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let dir = absolute(dir)?;
        let data_dir = dir.join("data");
        let password_file = dir.join("password");
        let initialised = data_dir.join("PG_VERSION").exists();
        let has_password = initialised && password_file.exists();
        let password = if has_password {
            let text = std::fs::read_to_string(&password_file)
                .with_context(|| format!("reading {}", password_file.display()))?;
            Password(text.trim().to_string())
        } else {
            Password::generate()
        };
        let pg = Self {
            data_dir,
            socket_dir: dir.join("run"),
            password_file,
            password,
            run_as: running_as_root().then(|| "postgres".to_string()),
            stopped: false,
        };

        std::fs::create_dir_all(&pg.socket_dir)
            .with_context(|| format!("creating {}", pg.socket_dir.display()))?;
        pg.give_to_cluster_user(&dir, true)?;
        pg.check_reachable(&dir)?;
        std::fs::set_permissions(&pg.socket_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", pg.socket_dir.display()))?;

        if !initialised {
            tracing::info!(dir = %pg.data_dir.display(), "initialising the embedded PostgreSQL cluster");
            pg.write_password_file()?;
            pg.run(
                "initdb",
                &[
                    "-D",
                    path_str(&pg.data_dir)?,
                    "-U",
                    DB_USER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    &format!("--pwfile={}", path_str(&pg.password_file)?),
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
            )?;
        } else if !has_password {
            tracing::info!(dir = %pg.data_dir.display(), "giving the embedded PostgreSQL cluster a password");
            pg.set_password_of_passwordless_cluster()?;
        }

        let pg_hba_changed = pg.write_pg_hba()?;
        if pg.is_running() {
            tracing::info!("the embedded PostgreSQL cluster is already running; using it");
            if pg_hba_changed {
                pg.run("pg_ctl", &["reload", "-D", path_str(&pg.data_dir)?])?;
            }
        } else {
            let options = format!(
                "-c listen_addresses='' -k {} -c unix_socket_permissions=0700 -p {PORT} -c max_connections=200 -c fsync=on",
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
            "postgres://{DB_USER}:{}@localhost:{PORT}/{database}?host={}",
            self.password.0,
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

    /// A cluster initialised by an earlier kairos trusts every local
    /// connection and its superuser has no password. Sets one in single-user
    /// mode (the server stopped), so the password is never on a command line
    /// and no connection is made while the cluster still trusts anyone. The
    /// file is written only once the role has the password: a crash in
    /// between leaves the cluster as it was, and the next start tries again.
    fn set_password_of_passwordless_cluster(&self) -> anyhow::Result<()> {
        if self.is_running() {
            self.pg_ctl_stop()?;
        }
        // The password is hex (`Password`), so it is safe inside the quotes.
        let statements = format!(
            "SET password_encryption = 'scram-sha-256'\nALTER ROLE {DB_USER} PASSWORD '{}'\n",
            self.password.0
        );
        self.run_with_input(
            "postgres",
            &[
                "--single",
                "-D",
                path_str(&self.data_dir)?,
                "-c",
                "exit_on_error=on",
                "postgres",
            ],
            &statements,
        )
        .context("setting the password of the embedded PostgreSQL superuser")?;
        self.write_password_file()
    }

    /// Writes the password file, readable only by the cluster's user (initdb
    /// reads it as that user), replacing any earlier one at once.
    fn write_password_file(&self) -> anyhow::Result<()> {
        let partial = self.password_file.with_extension("new");
        let _ = std::fs::remove_file(&partial);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        writeln!(file, "{}", self.password.0)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        self.give_to_cluster_user(&partial, false)?;
        std::fs::rename(&partial, &self.password_file)
            .with_context(|| format!("replacing {}", self.password_file.display()))
    }

    /// Makes `pg_hba.conf` exactly `PG_HBA`; true if it had to be rewritten.
    fn write_pg_hba(&self) -> anyhow::Result<bool> {
        let path = self.data_dir.join("pg_hba.conf");
        if std::fs::read_to_string(&path).is_ok_and(|text| text == PG_HBA) {
            return Ok(false);
        }
        std::fs::write(&path, PG_HBA).with_context(|| format!("writing {}", path.display()))?;
        self.give_to_cluster_user(&path, false)?;
        Ok(true)
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
        // Stopped by someone else already (or crashed): nothing to stop.
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop()
    }

    /// Stops the cluster at once, as a crash would (immediate shutdown: no
    /// checkpoint, recovery on the next start). For tests of what a database
    /// failure does to the host; start it again with `start` on the same
    /// directory.
    pub fn stop_immediately(&mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                path_str(&self.data_dir)?,
            ],
        )
    }

    fn pg_ctl_stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", path_str(&self.data_dir)?],
        )
    }

    /// As root, the cluster runs as its own user, which must be able to
    /// enter every directory above `dir`: said plainly here, rather than as
    /// a bare "Permission denied" from PostgreSQL.
    fn check_reachable(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let mut ancestors: Vec<&Path> = dir.ancestors().collect();
        ancestors.reverse();
        for ancestor in ancestors {
            let entered = Command::new("runuser")
                .args(["-u", user, "--", "test", "-x"])
                .arg(ancestor)
                .stdin(Stdio::null())
                .status()
                .context("running runuser")?;
            if !entered.success() {
                bail!(
                    "the embedded PostgreSQL runs as the `{user}` user (kairos runs as root), \
                     which cannot enter {}: make it searchable (`chmod o+x {}`), or set \
                     KAIROS_DATA_DIR to a directory `{user}` can reach (such as /var/lib/kairos)",
                    ancestor.display(),
                    ancestor.display()
                );
            }
        }
        Ok(())
    }

    /// As root, hands `path` to the cluster's user, which must read it.
    fn give_to_cluster_user(&self, path: &Path, recursive: bool) -> anyhow::Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let mut command = Command::new("chown");
        if recursive {
            command.arg("-R");
        }
        let status = command
            .args([&format!("{user}:"), path_str(path)?])
            .status()
            .context("running chown")?;
        if !status.success() {
            bail!("chown of {} to {user} failed", path.display());
        }
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let (program, mut command) = self.command(program);
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| cannot_run_hint(&program))?;
        ensure_success(&program, &output)
    }

    fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
        let (program, mut command) = self.command(program);
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| cannot_run_hint(&program))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
        drop(stdin);
        let output = child
            .wait_with_output()
            .with_context(|| format!("running {program}"))?;
        ensure_success(&program, &output)
    }

    /// The program, found, and a command running it as the cluster's user.
    fn command(&self, program: &str) -> (String, Command) {
        let program = find_binary(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", &program]);
                c
            }
            None => Command::new(&program),
        };
        command.current_dir("/");
        (program, command)
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

fn cannot_run_hint(program: &str) -> String {
    format!("running {program}: are the PostgreSQL binaries installed and on PATH?")
}

fn ensure_success(program: &str, output: &std::process::Output) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A PostgreSQL program: on PATH, else the newest Debian-style
/// `/usr/lib/postgresql/N/bin`, where the `postgresql` package puts it.
/// Public so tests can make clusters the way earlier versions did.
pub fn find_binary(program: &str) -> String {
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
