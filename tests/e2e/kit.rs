//! The plugin author's path, as `plugins/README.md` tells it: `kairos plugin
//! new`, build, `kairos plugin check`, load into a running host — here as a
//! replacement for birthday under concurrent load, with no failed call.

use crate::helpers::{ada, plugin_wasm, spawn_app_with};
use kairos::plugin::check::FIXTURES;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn kairos(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the kairos binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn plugin_check_passes_birthday_and_prints_each_subject_with_its_costs() {
    let wasm = plugin_wasm("kairos-birthday");
    let (ok, out) = kairos(&[
        "plugin",
        "check",
        path_str(&wasm),
        "--config",
        "send_at=07:30",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("birthday 0.1.0"), "{out}");
    for fixture in &FIXTURES {
        assert!(out.contains(fixture.label), "{}: {out}", fixture.label);
    }
    // Feb 29 in a non-leap year falls on Feb 28 at the configured time.
    assert!(out.contains("2027-02-28 07:30:00"), "{out}");
    assert!(
        out.contains("Hey, Ada Lovelace it's your birthday"),
        "{out}"
    );
    assert!(out.contains("fuel ") && out.contains("peak memory") && out.contains("µs"));
    assert!(out.contains("check passed"));
}

#[test]
fn plugin_check_runs_a_given_subject() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("subject-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let subject = dir.join("grace.json");
    std::fs::write(
        &subject,
        r#"{"first_name": "Grace", "last_name": "Hopper", "timezone": "America/New_York",
            "dates": {"birthday": "1906-12-09"}, "after": "2026-12-09T09:00:00"}"#,
    )
    .unwrap();
    let wasm = plugin_wasm("kairos-birthday");
    let (ok, out) = kairos(&[
        "plugin",
        "check",
        path_str(&wasm),
        "--subject",
        path_str(&subject),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2027-12-09 09:00:00 (due 2027-12-09T14:00:00Z)"),
        "{out}"
    );
    assert!(
        out.contains("Hey, Grace Hopper it's your birthday"),
        "{out}"
    );
}

#[test]
fn plugin_check_fails_a_misbehaving_component_with_a_nonzero_exit() {
    let wasm = plugin_wasm("kairos-misbehave");
    let (ok, out) = kairos(&[
        "plugin",
        "check",
        path_str(&wasm),
        "--config",
        "mode.format=trap",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED: format-message: trap: "), "{out}");
    assert!(out.contains("check FAILED"), "{out}");

    let (ok, out) = kairos(&["plugin", "check", "/nonexistent.wasm"]);
    assert!(!ok);
    assert!(out.contains("/nonexistent.wasm"), "{out}");
    let (ok, out) = kairos(&["plugin", "check", path_str(&wasm), "--config", "novalue"]);
    assert!(!ok);
    assert!(out.contains("KEY=VALUE"), "{out}");
}

#[tokio::test]
async fn a_new_plugin_builds_passes_check_and_replaces_birthday_under_load_without_a_failed_call() {
    // 1. Scaffold and build, as plugins/README.md says.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("scaffold-{}", uuid::Uuid::new_v4().simple()));
    let dir = root.join("birthday");
    let (ok, out) = kairos(&["plugin", "new", "birthday", "--path", path_str(&dir)]);
    assert!(ok, "{out}");
    let (ok, out) = kairos(&["plugin", "new", "birthday", "--path", path_str(&dir)]);
    assert!(!ok, "refuses to overwrite: {out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let test = Command::new(cargo)
        .current_dir(&dir)
        .args(["test", "--quiet", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(test.success(), "the scaffold's unit tests pass");
    let build = Command::new(cargo)
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .unwrap();
    assert!(build.success(), "the scaffold builds");
    let wasm = target.join("wasm32-wasip2/release/kairos_plugin_birthday.wasm");
    let (ok, out) = kairos(&["plugin", "check", path_str(&wasm)]);
    assert!(ok, "the scaffold passes check as it is: {out}");
    let new_bytes = std::fs::read(&wasm).unwrap();

    // 2. A running host under load: creating users (generation) and
    //    formatting messages on blocking threads, all the time.
    let app = spawn_app_with(|s| s.claimer = true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let new_text_seen = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..3 {
        let (registry, stop, failures, seen) = (
            app.registry.clone(),
            stop.clone(),
            failures.clone(),
            new_text_seen.clone(),
        );
        callers.push(tokio::task::spawn_blocking(move || {
            let subject = kairos::plugin::Subject {
                id: uuid::Uuid::new_v4(),
                first_name: "Ada".into(),
                last_name: "Lovelace".into(),
                timezone: "Europe/London".into(),
                dates: [("birthday".to_string(), "1815-12-10".parse().unwrap())].into(),
                attributes: Default::default(),
            };
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let plugin = registry.get("birthday").expect("birthday is always loaded");
                let occurrence = "2026-12-10T09:00:00".parse().unwrap();
                match plugin.format_message(&subject, occurrence) {
                    Ok(text) if text == "Hey, Ada Lovelace: happy birthday!" => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if plugin.next_occurrence(&subject, occurrence).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls += 1;
            }
            calls
        }));
    }
    let user = app.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap().to_string();

    let response = app.put_type("birthday", "", new_bytes).await;
    assert_eq!(response.status(), 200, "a replacement");
    for _ in 0..20 {
        let created = app.create_user(&ada()).await;
        let events = app.events_of(created["id"].as_str().unwrap()).await;
        assert_eq!(events.len(), 1, "every new user is scheduled: {events:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while new_text_seen.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new version never called"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    assert!(calls > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no failed call in {calls}"
    );

    // 3. The next delivery uses the new text.
    app.event_types.settle().await;
    let events = app.events_of(&user_id).await;
    let pending = events.iter().find(|e| e["status"] == "pending").unwrap();
    app.make_due(pending["id"].as_str().unwrap()).await;
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        received[0].body["message"]["text"],
        "Hey, Ada Lovelace: happy birthday!"
    );
}
