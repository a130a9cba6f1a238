//! The embedded cluster: it asks for its generated password, keeps its
//! socket where only its user can reach it, and locks down a cluster made by
//! an earlier kairos without losing its data.

use kairos::embedded_pg::{EmbeddedPostgres, find_binary};
use sqlx::{Connection, PgConnection};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An empty directory of this test process for one test's cluster.
fn cluster_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedded-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program run as the user the embedded cluster runs as.
fn as_cluster_user(program: &str) -> Command {
    let program = find_binary(program);
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &program]);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn url_without_password(dir: &Path) -> String {
    format!(
        "postgres://kairos@localhost:5432/postgres?host={}",
        dir.join("run").display()
    )
}

async fn assert_refused_without_password(dir: &Path) {
    let error = PgConnection::connect(&url_without_password(dir))
        .await
        .expect_err("a connection without the password is refused");
    assert!(
        error.to_string().contains("password authentication"),
        "{error}"
    );
}

#[tokio::test]
async fn a_new_cluster_refuses_a_connection_without_its_password_and_accepts_its_url() {
    let dir = cluster_dir("new");
    let pg = EmbeddedPostgres::start(&dir).unwrap();

    assert_refused_without_password(&dir).await;
    let mut connection = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(user, "kairos");
    connection.close().await.unwrap();

    drop(pg);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn only_the_clusters_user_can_enter_the_socket_directory_or_read_the_password() {
    let dir = cluster_dir("private");
    let pg = EmbeddedPostgres::start(&dir).unwrap();

    let socket_dir = std::fs::metadata(dir.join("run")).unwrap();
    assert_eq!(socket_dir.permissions().mode() & 0o777, 0o700);
    let password_file = std::fs::metadata(dir.join("password")).unwrap();
    assert_eq!(password_file.permissions().mode() & 0o777, 0o600);
    let data_dir = std::fs::metadata(dir.join("data")).unwrap();
    assert_eq!(data_dir.permissions().mode() & 0o777, 0o700);
    if running_as_root() {
        let postgres_uid = data_dir.uid();
        assert_ne!(postgres_uid, 0, "the cluster runs as postgres, not root");
        assert_eq!(socket_dir.uid(), postgres_uid);
        assert_eq!(password_file.uid(), postgres_uid);
    }

    let password = std::fs::read_to_string(dir.join("password")).unwrap();
    let password = password.trim();
    assert!(password.len() >= 64, "32 random bytes as hex: {password}");
    assert!(pg.url("postgres").contains(password));
    assert!(!format!("{pg:?}").contains(password), "{pg:?}");

    drop(pg);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_pg_hba_conf_edited_while_the_cluster_runs_is_put_back_on_the_next_start() {
    let dir = cluster_dir("pg-hba");
    let first = EmbeddedPostgres::start(&dir).unwrap();
    let pg_hba = dir.join("data/pg_hba.conf");
    let ours = std::fs::read_to_string(&pg_hba).unwrap();
    std::fs::write(&pg_hba, "local all all trust\n").unwrap();
    run(as_cluster_user("pg_ctl")
        .args(["reload", "-D"])
        .arg(dir.join("data")));

    let second = EmbeddedPostgres::start(&dir).unwrap();
    assert_eq!(std::fs::read_to_string(&pg_hba).unwrap(), ours);
    // A reload takes effect when the server gets to it, not when pg_ctl returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while PgConnection::connect(&url_without_password(&dir))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the rewritten pg_hba.conf was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_refused_without_password(&dir).await;

    drop(second);
    drop(first);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stops a cluster the test started itself, if the test ends before
/// `EmbeddedPostgres` has taken it over.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = as_cluster_user("pg_ctl")
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(self.0)
            .output();
    }
}

#[tokio::test]
async fn a_running_cluster_made_by_an_earlier_kairos_gets_a_password_and_keeps_its_data() {
    let dir = cluster_dir("upgrade");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    if running_as_root() {
        run(Command::new("chown").args(["-R", "postgres:"]).arg(&dir));
    }
    run(as_cluster_user("initdb").arg("-D").arg(&data_dir).args([
        "-U",
        "kairos",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-instructions",
    ]));
    run(as_cluster_user("pg_ctl")
        .args(["start", "-w", "-D"])
        .arg(&data_dir)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("-o")
        .arg(format!(
            "-c listen_addresses='' -k {} -p 5432",
            dir.join("run").display()
        )));
    let _stop = StopOnDrop(&data_dir);

    let mut trusted = PgConnection::connect(&url_without_password(&dir))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE kept (note text)")
        .execute(&mut trusted)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('written before the upgrade')")
        .execute(&mut trusted)
        .await
        .unwrap();
    trusted.close().await.unwrap();

    let pg = EmbeddedPostgres::start(&dir).unwrap();
    let kairos_url = pg.ensure_database().await.unwrap();

    assert_refused_without_password(&dir).await;
    let mut connection = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    let note: String = sqlx::query_scalar("SELECT note FROM kept")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(note, "written before the upgrade");
    connection.close().await.unwrap();
    PgConnection::connect(&kairos_url)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let socket_dir = std::fs::metadata(dir.join("run")).unwrap();
    assert_eq!(socket_dir.permissions().mode() & 0o777, 0o700);

    drop(pg);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_data_directory_the_cluster_user_cannot_reach_is_refused_with_what_to_do() {
    if !running_as_root() {
        // Only as root does the cluster run as another user.
        return;
    }
    let locked = cluster_dir("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let error = EmbeddedPostgres::start(&locked.join("inside").join("postgres"))
        .expect_err("postgres cannot enter the directory");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("cannot enter {}", locked.display())),
        "{message}"
    );
    assert!(
        message.contains("chmod o+x") && message.contains("KAIROS_DATA_DIR"),
        "{message}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&locked).unwrap();
}
