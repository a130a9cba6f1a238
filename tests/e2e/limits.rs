//! The sandbox holds: a deliberately misbehaving component (tests/fixtures/
//! misbehave) loops, allocates, traps, floods the log and probes for
//! capabilities; each costs one call with a typed reason, never the host.

use crate::helpers::{ada, plugin_bytes, plugin_dir_with_birthday, plugin_wasm, spawn_app_with};
use chrono::NaiveDateTime;
use kairos::plugin::{
    LoadedPlugin, MAX_LOG_LINES_PER_CALL, PluginLimits, PluginRuntime, PluginSource, Subject,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn misbehave(mode: &str, limits: PluginLimits) -> LoadedPlugin {
    let runtime = PluginRuntime::new(limits).unwrap();
    LoadedPlugin::load(
        &runtime,
        &plugin_bytes("kairos-misbehave"),
        BTreeMap::from([("mode.format".to_string(), mode.to_string())]),
        None,
        PluginSource::File(plugin_wasm("kairos-misbehave")),
    )
    .unwrap()
}

fn subject() -> Subject {
    Subject {
        id: uuid::Uuid::new_v4(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        timezone: "Europe/London".into(),
        dates: BTreeMap::from([("birthday".to_string(), "1815-12-10".parse().unwrap())]),
        attributes: BTreeMap::new(),
    }
}

fn occurrence() -> NaiveDateTime {
    "2026-12-10T09:00:00".parse().unwrap()
}

/// Ada, with an attribute that makes the misbehave type's formatting misbehave.
fn misbehaving_user(mode: &str) -> Value {
    let mut user = ada();
    user["attributes"]["mode.format"] = Value::from(mode);
    user
}

const ROOMY: PluginLimits = PluginLimits {
    deadline: Duration::from_secs(10),
    fuel: 20_000_000_000,
    memory: 32 << 20,
};

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let deadline = Duration::from_millis(200);
    let plugin = misbehave("loop", PluginLimits { deadline, ..ROOMY });
    let started = Instant::now();
    let error = plugin.format_message(&subject(), occurrence()).unwrap_err();
    let took = started.elapsed();
    assert!(error.to_string().starts_with("timeout"), "{error}");
    // Deadlines count 10 ms epoch ticks, so one tick of slack.
    assert!(
        took >= deadline - Duration::from_millis(10),
        "stopped early: {took:?}"
    );
    assert!(
        took < deadline + Duration::from_secs(2),
        "overran: {took:?}"
    );
    // The next call on the same type runs normally.
    assert!(plugin.next_occurrence(&subject(), occurrence()).is_ok());
}

#[test]
fn a_cpu_hog_runs_out_of_fuel() {
    let plugin = misbehave(
        "fuel",
        PluginLimits {
            fuel: 5_000_000,
            ..ROOMY
        },
    );
    let error = plugin.format_message(&subject(), occurrence()).unwrap_err();
    assert!(error.to_string().starts_with("fuel"), "{error}");
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let plugin = misbehave("alloc", ROOMY);
    let error = plugin.format_message(&subject(), occurrence()).unwrap_err();
    assert!(error.to_string().starts_with("memory"), "{error}");
}

#[test]
fn a_trap_and_a_returned_error_are_told_apart() {
    let trap = misbehave("trap", ROOMY)
        .format_message(&subject(), occurrence())
        .unwrap_err()
        .to_string();
    assert!(trap.starts_with("trap: "), "{trap}");
    assert!(
        trap.contains("deliberate trap"),
        "the panic message is kept: {trap}"
    );
    let returned = misbehave("err", ROOMY)
        .format_message(&subject(), occurrence())
        .unwrap_err()
        .to_string();
    assert_eq!(returned, "plugin error: deliberate error");
}

#[test]
fn huge_output_is_refused() {
    let error = misbehave("huge-output", ROOMY)
        .format_message(&subject(), occurrence())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("plugin error: output too large"),
        "{error}"
    );
}

#[test]
fn a_log_flood_is_cut_to_the_per_call_cap() {
    let plugin = misbehave("log-flood", ROOMY);
    let text = plugin.format_message(&subject(), occurrence()).unwrap();
    assert!(text.contains("misbehave ok"), "{text}");
    let (logged, dropped) = plugin.log_counts();
    assert_eq!(logged, u64::from(MAX_LOG_LINES_PER_CALL));
    assert_eq!(logged + dropped, 10_000);
}

#[test]
fn a_plugin_has_no_filesystem_network_environment_clock_or_randomness() {
    // A listener the plugin is told to connect to: if the sandbox let it
    // through, the connection would arrive here and the probe say `ok`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let runtime = PluginRuntime::new(ROOMY).unwrap();
    let plugin = LoadedPlugin::load(
        &runtime,
        &plugin_bytes("kairos-misbehave"),
        BTreeMap::from([
            ("mode.format".to_string(), "probe".to_string()),
            (
                "probe.addr".to_string(),
                listener.local_addr().unwrap().to_string(),
            ),
        ]),
        None,
        PluginSource::File(plugin_wasm("kairos-misbehave")),
    )
    .unwrap();
    let first = plugin.format_message(&subject(), occurrence()).unwrap();
    let fields: BTreeMap<&str, &str> = first
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    assert_eq!(fields.get("fs"), Some(&"err"), "{first}");
    assert_eq!(fields.get("readdir"), Some(&"err"), "{first}");
    assert_eq!(fields.get("env"), Some(&"0"), "{first}");
    assert_eq!(fields.get("clock"), Some(&"0"), "{first}");
    // Refused by the host, not a guest without sockets.
    assert_eq!(fields.get("net"), Some(&"err:PermissionDenied"), "{first}");
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "no connection reached the listener"
    );
    assert_eq!(fields.get("instant_ns"), Some(&"0"), "{first}");
    assert!(fields.contains_key("random"), "{first}");
    // And it is a pure function: a second call sees exactly the same world,
    // random bytes included.
    let second = plugin.format_message(&subject(), occurrence()).unwrap();
    assert_eq!(first, second);
}

#[tokio::test]
async fn a_failing_type_fails_its_own_events_and_every_other_type_keeps_delivering() {
    let dir = plugin_dir_with_birthday(None);
    std::fs::copy(plugin_wasm("kairos-misbehave"), dir.join("misbehave.wasm")).unwrap();
    let app = spawn_app_with(|s| {
        s.plugin_dir = dir;
        s.claimer = true;
    })
    .await;
    // The type passes its self-check and loads; it traps for this user only.
    let user = app.create_user(&misbehaving_user("trap")).await;
    let events = app.events_of(user["id"].as_str().unwrap()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        app.make_due(event["id"].as_str().unwrap()).await;
    }
    let failing = events
        .iter()
        .find(|e| e["event_type"] == "misbehave")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].body["event_type"], "birthday");
    // A plugin failure is retried, up to the attempts allowed.
    let event = app.wait_for_status(&failing, "failed").await;
    assert_eq!(event["attempts"], 3);
    assert!(
        event["last_error"].as_str().unwrap().starts_with("trap: "),
        "{event}"
    );

    let types = app.event_types().await;
    let health = &types.iter().find(|t| t["name"] == "misbehave").unwrap()["health"];
    assert_eq!(health["status"], "failing", "{health}");
    assert_eq!(health["failures"], 3, "{health}");
    assert!(health["recent_failures"].as_u64().unwrap() >= 3, "{health}");
    assert!(health["last_error"].as_str().unwrap().starts_with("trap: "));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("kairos_plugin_failing{event_type=\"misbehave\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kairos_plugin_failing{event_type=\"birthday\"} 0"));

    // The host keeps serving.
    let other: Value = app.create_user(&ada()).await;
    assert!(other["id"].is_string());
    assert_eq!(app.receiver.received().len(), 1, "nothing else was sent");
}

#[tokio::test]
async fn a_looping_type_costs_its_own_attempt_only() {
    let dir = plugin_dir_with_birthday(None);
    std::fs::copy(plugin_wasm("kairos-misbehave"), dir.join("misbehave.wasm")).unwrap();
    let app = spawn_app_with(|s| {
        s.plugin_dir = dir;
        s.plugin_deadline = Duration::from_millis(100);
        s.plugin_fuel = 50_000_000_000;
        s.claimer = true;
    })
    .await;
    let user = app.create_user(&misbehaving_user("loop")).await;
    let events = app.events_of(user["id"].as_str().unwrap()).await;
    for event in &events {
        app.make_due(event["id"].as_str().unwrap()).await;
    }
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].body["event_type"], "birthday");
    let looping = events
        .iter()
        .find(|e| e["event_type"] == "misbehave")
        .unwrap();
    let event = app
        .wait_for_status(looping["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(event["attempts"], 3, "each attempt cost one call: {event}");
    assert!(
        event["last_error"].as_str().unwrap().starts_with("timeout"),
        "{event}"
    );
    assert_eq!(app.get("/health").await.status(), 200);
}
