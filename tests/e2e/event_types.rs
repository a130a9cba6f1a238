//! Event types in a running host: the admin API, the watched plugin
//! directory, persistence and the compiled-component cache.

use crate::helpers::{
    ADMIN_TOKEN, TestApp, ada, eventually, plugin_bytes, spawn_app, spawn_app_on, spawn_app_with,
    urlencode,
};
use kairos::fleet;
use kairos::plugin::PluginFile;
use kairos::plugin::{Compiled, LoadedPlugin, PluginLimits, PluginRuntime, PluginSource};
use kairos::scheduler::{self, PassEnd};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn by_name<'a>(types: &'a [Value], name: &str) -> Option<&'a Value> {
    types.iter().find(|t| t["name"] == name)
}

fn events_of_type<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .collect()
}

/// The one pending event of `event_type` for the user, after every
/// scheduling pass has finished.
async fn the_pending(app: &TestApp, user_id: &str, event_type: &str) -> Value {
    app.event_types.settle().await;
    let events = app.events_of(user_id).await;
    let pending = pending_of_type(&events, event_type);
    assert_eq!(pending.len(), 1, "{events:?}");
    pending[0].clone()
}

fn occurrence_of(event: &Value) -> &str {
    event["occurrence"].as_str().unwrap()
}

fn pending_of_type<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events_of_type(events, event_type)
        .into_iter()
        .filter(|e| e["status"] == "pending")
        .collect()
}

#[tokio::test]
async fn event_types_lists_each_loaded_type_with_its_description_and_health() {
    let app = spawn_app().await;
    let types = app.event_types().await;
    assert_eq!(types.len(), 1, "{types:?}");
    let birthday = &types[0];
    assert_eq!(birthday["name"], "birthday");
    assert_eq!(birthday["version"], "0.1.0");
    assert_eq!(birthday["dates"], json!(["birthday"]));
    assert_eq!(birthday["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        birthday["source"],
        json!({"kind": "directory", "file": "birthday.wasm"})
    );
    assert_eq!(birthday["health"]["status"], "ok");
    assert!(birthday["loaded_at"].is_string());
    assert_eq!(birthday["config"], json!({}));
}

#[tokio::test]
async fn the_admin_api_refuses_requests_without_the_right_bearer_token() {
    let app = spawn_app().await;
    let wasm = plugin_bytes("kairos-anniversary");
    let url = app.url("/event-types/anniversary");
    for auth in [None, Some("wrong-token"), Some("")] {
        let mut request = app.http.put(&url).body(wasm.clone());
        if let Some(token) = auth {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let response = app
        .http
        .delete(app.url("/event-types/birthday"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let names: Vec<Value> = app
        .event_types()
        .await
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("birthday")], "nothing changed");

    // No token configured: the admin API is closed.
    let closed = spawn_app_with(|s| s.admin_token = None).await;
    let response = closed
        .http
        .put(closed.url("/event-types/anniversary"))
        .bearer_auth(ADMIN_TOKEN)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_uploaded_type_is_scheduled_for_users_created_before_it_and_delivers() {
    let app = spawn_app_with(|s| s.claimer = true).await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    assert!(events_of_type(&app.events_of(id).await, "anniversary").is_empty());

    // Its own webhook URL (here the same receiver under another path).
    let hook = format!("{}?type=anniversary", app.receiver.url());
    let query = format!("?config.send_at=10:30&webhook_url={}", urlencode(&hook));
    let response = app
        .put_type("anniversary", &query, plugin_bytes("kairos-anniversary"))
        .await;
    assert_eq!(response.status(), 201);
    let described: Value = response.json().await.unwrap();
    assert_eq!(described["webhook_url"], hook);
    assert_eq!(described["name"], "anniversary");
    assert_eq!(described["dates"], json!(["anniversary"]));
    assert_eq!(described["config"], json!({"send_at": "10:30"}));
    assert_eq!(described["source"]["kind"], "upload");
    app.event_types.settle().await;

    let events = app.events_of(id).await;
    let anniversary = events_of_type(&events, "anniversary");
    assert_eq!(anniversary.len(), 1, "{events:?}");
    let event = anniversary[0];
    let occurrence = event["occurrence"].as_str().unwrap();
    assert!(occurrence.ends_with("-07-08T10:30:00"), "{occurrence}");
    let year: i32 = occurrence[..4].parse().unwrap();

    app.make_due(event["id"].as_str().unwrap()).await;
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].body["event_type"], "anniversary");
    assert_eq!(
        received[0].uri, "/hook?type=anniversary",
        "the type's own URL"
    );
    assert_eq!(
        received[0].body["message"]["text"],
        format!("Hey, Ada Lovelace happy {} year anniversary", year - 1835)
    );
}

#[tokio::test]
async fn a_replaced_type_recomputes_pending_events_and_an_unloaded_one_cancels_them() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap();
    let wasm = plugin_bytes("kairos-anniversary");
    assert_eq!(
        app.put_type("anniversary", "", wasm.clone()).await.status(),
        201
    );
    let first = the_pending(&app, id, "anniversary").await;
    assert!(occurrence_of(&first).ends_with("T09:00:00"));

    // Same component, new config: a replacement (200) that moves the event.
    let response = app
        .put_type("anniversary", "?config.send_at=18:00", wasm.clone())
        .await;
    assert_eq!(response.status(), 200);
    let moved = the_pending(&app, id, "anniversary").await;
    assert!(occurrence_of(&moved).ends_with("T18:00:00"));
    let events = app.events_of(id).await;
    let old = events.iter().find(|e| e["id"] == first["id"]).unwrap();
    assert_eq!(old["status"], "cancelled");

    // Unload: pending events cancelled, the upload forgotten.
    let response = app.delete_type("anniversary").await;
    assert_eq!(response.status(), 204);
    let events = app.events_of(id).await;
    assert!(
        events_of_type(&events, "anniversary")
            .iter()
            .all(|e| e["status"] == "cancelled"),
        "{events:?}"
    );
    assert!(by_name(&app.event_types().await, "anniversary").is_none());
    assert!(
        !app.settings
            .data_dir
            .join("plugins/anniversary.wasm")
            .exists()
    );
    let again = app.delete_type("anniversary").await;
    assert_eq!(again.status(), 404);

    // Loaded again: scheduled afresh, cancelled events do not block it.
    assert_eq!(app.put_type("anniversary", "", wasm).await.status(), 201);
    the_pending(&app, id, "anniversary").await;
}

#[tokio::test]
async fn a_bad_upload_is_a_400_with_the_reason_and_changes_nothing() {
    let app = spawn_app().await;
    let birthday_before = app.event_types().await[0]["sha256"].clone();
    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        (
            "anniversary",
            "",
            b"not wasm at all".to_vec(),
            "body",
            "not a valid WebAssembly component",
        ),
        ("anniversary", "", Vec::new(), "body", "empty"),
        (
            "anniversary",
            "",
            plugin_bytes("kairos-birthday"),
            "body",
            "describes itself as \"birthday\"",
        ),
        (
            "misbehave",
            "?config.mode=loop",
            plugin_bytes("kairos-misbehave"),
            "body",
            "self-check failed",
        ),
        (
            "misbehave",
            "?config.mode=trap",
            plugin_bytes("kairos-misbehave"),
            "body",
            "trap",
        ),
        (
            "Bad Name",
            "",
            plugin_bytes("kairos-anniversary"),
            "name",
            "type name",
        ),
        (
            "anniversary",
            "?colour=blue",
            plugin_bytes("kairos-anniversary"),
            "colour",
            "unknown query parameter",
        ),
        (
            "anniversary",
            "?webhook_url=not%20a%20url",
            plugin_bytes("kairos-anniversary"),
            "webhook_url",
            "not a URL",
        ),
        (
            "birthday",
            "",
            plugin_bytes("kairos-misbehave"),
            "body",
            "describes itself as \"misbehave\"",
        ),
    ];
    for (name, query, bytes, field, reason) in cases {
        let response = app.put_type(name, query, bytes).await;
        assert_eq!(response.status(), 400, "{name}{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], field, "{name}{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(reason), "{name}{query}: {error}");
    }
    // Components may be larger than the 1 MiB JSON limit, up to 32 MiB.
    let response = app.put_type("anniversary", "", vec![0u8; 2 << 20]).await;
    assert_eq!(
        response.status(),
        400,
        "read, then refused as not a component"
    );
    let response = app.put_type("anniversary", "", vec![0u8; 33 << 20]).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("larger than the limit")
    );
    assert_eq!(app.get("/event-types/nope").await.status(), 404);

    // A plain (core) WebAssembly module is not a component.
    let response = app
        .put_type("anniversary", "", b"\0asm\x01\0\0\0".to_vec())
        .await;
    assert_eq!(response.status(), 400);

    let response = app
        .http
        .put(app.url("/event-types/anniversary"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "content-type");

    let types = app.event_types().await;
    assert_eq!(types.len(), 1, "{types:?}");
    assert_eq!(types[0]["sha256"], birthday_before, "birthday untouched");
    // Nothing reached the fleet's registry either.
    let (types, components): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM event_types), (SELECT count(*) FROM components)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((types, components), (1, 1), "only the bundled birthday");
}

#[tokio::test]
async fn uploads_survive_a_restart_and_load_from_the_compiled_cache() {
    let first = spawn_app().await;
    let response = first
        .put_type(
            "anniversary",
            "?config.send_at=07:15",
            plugin_bytes("kairos-anniversary"),
        )
        .await;
    assert_eq!(response.status(), 201);
    let sha = response.json::<Value>().await.unwrap()["sha256"].clone();
    let cached: Vec<_> = std::fs::read_dir(first.settings.data_dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        cached
            .iter()
            .any(|f| f.starts_with(sha.as_str().unwrap()) && f.ends_with(".cwasm")),
        "{cached:?}"
    );
    let settings = first.settings.clone();
    let receiver = first.receiver.clone();
    first.event_types.settle().await;
    first.stop().await;

    let second = spawn_app_on(settings, receiver).await;
    let types = second.event_types().await;
    let anniversary = by_name(&types, "anniversary").expect("still loaded");
    assert_eq!(anniversary["sha256"], sha);
    assert_eq!(anniversary["config"], json!({"send_at": "07:15"}));
    for name in ["birthday", "anniversary"] {
        assert_eq!(
            second.registry.get(name).unwrap().compiled,
            Compiled::FromCache,
            "{name} was compiled again"
        );
    }
}

#[tokio::test]
async fn the_watched_directory_loads_replaces_and_unloads_types() {
    let app = spawn_app().await;
    let user = app.create_user(&ada()).await;
    let id = user["id"].as_str().unwrap().to_string();
    let dir = app.settings.plugin_dir.clone();
    let wasm = plugin_bytes("kairos-anniversary");

    // A partial write is never loaded: the watcher reads it, refuses it, and
    // keeps waiting for the file to be complete.
    let syncs = app.event_types.syncs();
    std::fs::write(dir.join("anniversary.wasm"), &wasm[..wasm.len() / 2]).unwrap();
    eventually(
        "the partial file to be read",
        Duration::from_secs(10),
        || async { app.event_types.syncs() > syncs },
    )
    .await;
    assert!(app.registry.get("anniversary").is_none());

    std::fs::write(dir.join("anniversary.wasm"), &wasm).unwrap();
    eventually("anniversary to load", Duration::from_secs(10), || async {
        app.registry.get("anniversary").is_some()
    })
    .await;
    let scheduled = the_pending(&app, &id, "anniversary").await;
    assert!(occurrence_of(&scheduled).ends_with("T09:00:00"));

    // Editing NAME.toml alone reloads the type with the new config.
    std::fs::write(
        dir.join("anniversary.toml"),
        "[config]\nsend_at = \"11:45\"\n",
    )
    .unwrap();
    eventually("the new config", Duration::from_secs(10), || async {
        app.registry
            .get("anniversary")
            .is_some_and(|p| p.config.get("send_at").map(String::as_str) == Some("11:45"))
    })
    .await;
    let pending = the_pending(&app, &id, "anniversary").await;
    assert!(occurrence_of(&pending).ends_with("T11:45:00"));

    // Removing NAME.wasm unloads it and cancels its pending events. The type
    // leaves the registry first (nothing new is planned for it), then its
    // events are cancelled: wait for both.
    std::fs::remove_file(dir.join("anniversary.wasm")).unwrap();
    eventually(
        "anniversary to unload and its events to be cancelled",
        Duration::from_secs(10),
        || async {
            let events = app.events_of(&id).await;
            app.registry.get("anniversary").is_none()
                && events_of_type(&events, "anniversary")
                    .iter()
                    .all(|e| e["status"] == "cancelled")
        },
    )
    .await;
    let events = app.events_of(&id).await;
    assert!(
        !events_of_type(&events, "anniversary").is_empty(),
        "{events:?}"
    );
    assert!(app.registry.get("birthday").is_some(), "birthday untouched");
}

/// The sha256 of `wit/event-plugin.wit` as released in 0.1.0 (commit 11658a7).
const WIT_0_1_0_SHA256: &str = "ea405695e387f74cbaa735d84b69119edb30092c550312ae84d9e83de215a774";

/// The frozen copy is the released 0.1.0 interface, so this test cannot be
/// kept green by editing the copy along with `wit/`. While `wit/` is still
/// 0.1.0 the two are the same text; the day it moves on, this is the test
/// that a component built against the old interface still loads and sends.
#[tokio::test]
async fn a_plugin_built_against_wit_0_1_0_still_loads() {
    let frozen = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/compat-0.1.0/wit/event-plugin.wit"),
    )
    .unwrap();
    let digest: String = Sha256::digest(&frozen)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest, WIT_0_1_0_SHA256,
        "tests/fixtures/compat-0.1.0/wit was edited"
    );

    let app = spawn_app_with(|s| s.claimer = true).await;
    let response = app
        .put_type("compat", "", plugin_bytes("kairos-compat-v0-1-0"))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "compat");
    let user = app.create_user(&ada()).await;
    let events = app.events_of(user["id"].as_str().unwrap()).await;
    let compat = events_of_type(&events, "compat");
    assert_eq!(compat.len(), 1, "{events:?}");
    app.make_due(compat[0]["id"].as_str().unwrap()).await;
    let received = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].body["message"]["text"], "compat Ada");
}

#[tokio::test]
async fn two_replicas_starting_one_pass_at_once_run_it_once_and_write_one_event_per_user() {
    // A host that does not follow the registry, so only the two "replicas"
    // below take the pass.
    let app = spawn_app_with(|s| s.follow = false).await;
    for _ in 0..25 {
        app.create_user(&ada()).await;
    }
    let runtime = PluginRuntime::new(PluginLimits::default()).unwrap();
    let bytes = plugin_bytes("kairos-anniversary");
    let plugin = Arc::new(
        LoadedPlugin::load(
            &runtime,
            &bytes,
            Default::default(),
            None,
            PluginSource::File("anniversary.wasm".into()),
        )
        .unwrap(),
    );
    let settings = PluginFile::default();
    let published = fleet::publish(
        &app.pool,
        &fleet::Change {
            name: "anniversary",
            bytes: &bytes,
            sha256: &plugin.sha256,
            version: &plugin.info.version,
            settings: &settings,
            source: fleet::Source::Api,
            file_modified: None,
            actor: &kairos::audit::Actor::kairos(),
        },
    )
    .await
    .unwrap();
    let generation = published.generation().unwrap();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    for replica in [one, two] {
        fleet::heartbeat(
            &app.pool,
            replica,
            "test",
            Duration::from_secs(60),
            &Default::default(),
        )
        .await
        .unwrap();
    }
    let (a, b) = tokio::join!(
        scheduler::run_pass(&app.pool, plugin.clone(), generation, one, 7),
        scheduler::run_pass(&app.pool, plugin.clone(), generation, two, 3),
    );
    let mut ends = [a.unwrap(), b.unwrap()];
    ends.sort_by_key(|end| matches!(end, PassEnd::NotMine));
    assert_eq!(
        ends,
        [PassEnd::Finished { written: 25 }, PassEnd::NotMine],
        "one replica runs the pass, the other leaves it"
    );
    let per_user: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'anniversary' AND status = 'pending' \
         GROUP BY user_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(per_user.len(), 25);
    assert!(per_user.iter().all(|n| *n == 1), "{per_user:?}");

    // The pass is complete: nobody runs it again for this generation.
    let again = scheduler::run_pass(&app.pool, plugin, generation, Uuid::now_v7(), 7)
        .await
        .unwrap();
    assert_eq!(again, PassEnd::NotMine);
    app.stop().await;
}
