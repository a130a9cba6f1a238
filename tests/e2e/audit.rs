//! The audit log: every change through the API or the plugin directory, by
//! a token's fingerprint and never the token, in the change's transaction.

use crate::helpers::{ADMIN_TOKEN, TestApp, ada, plugin_bytes, spawn_app_with};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CLIENT_TOKEN: &str = "client-token-for-the-audit";

/// The first 12 hex digits of the token's SHA-256, computed here apart
/// from the host's code.
fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..12]
        .to_string()
}

async fn audit(app: &TestApp, query: &str) -> (String, Vec<Value>) {
    let response = app
        .http
        .get(app.url(&format!("/audit{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    (text, entries)
}

/// A request with `token` as bearer.
fn with(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    app.http.request(method, app.url(path)).bearer_auth(token)
}

#[tokio::test]
async fn every_change_is_on_record_once_by_its_tokens_fingerprint_never_the_token() {
    let app = spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.into())).await;
    let (client, admin) = (fingerprint(CLIENT_TOKEN), fingerprint(ADMIN_TOKEN));
    use reqwest::Method;

    // Client changes.
    let user: Value = with(&app, Method::POST, "/users", CLIENT_TOKEN)
        .json(&ada())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = user["id"].as_str().unwrap().to_string();
    let mut changed = ada();
    changed["timezone"] = json!("Asia/Tokyo");
    let response = with(
        &app,
        Method::PUT,
        &format!("/users/{user_id}"),
        CLIENT_TOKEN,
    )
    .json(&changed)
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let lines = format!("{}\n{}\n{{\"first_name\": 1}}\n", ada(), ada());
    let response = with(&app, Method::POST, "/users/import", CLIENT_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A failed event, retried by the admin token (accepted on client routes).
    app.receiver.respond_with(&[400]);
    let events: Vec<Value> = with(
        &app,
        Method::GET,
        &format!("/users/{user_id}/events"),
        ADMIN_TOKEN,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let event_id = events[0]["id"].as_str().unwrap().to_string();
    app.make_due(&event_id).await;
    assert_eq!(app.run_claimer_once().await, 1);
    let response = with(
        &app,
        Method::POST,
        &format!("/events/{event_id}/retry"),
        ADMIN_TOKEN,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "pending");
    let response = with(
        &app,
        Method::DELETE,
        &format!("/users/{user_id}"),
        CLIENT_TOKEN,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);

    // Admin changes: a type loaded, replaced, deleted; an endpoint updated,
    // disabled and enabled.
    let anniversary = plugin_bytes("kairos-anniversary");
    assert_eq!(
        app.put_type("anniversary", "", anniversary.clone())
            .await
            .status(),
        201
    );
    let response = app
        .put_type("anniversary", "?config.send_at=10:00", anniversary)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.delete_type("anniversary").await.status(), 204);
    let endpoints: Vec<Value> = with(&app, Method::GET, "/endpoints", ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = endpoints[0]["id"].as_str().unwrap().to_string();
    let response = with(
        &app,
        Method::PUT,
        &format!("/endpoints/{endpoint}"),
        ADMIN_TOKEN,
    )
    .json(&json!({"rate_per_s": 20}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    for action in ["disable", "enable"] {
        let path = format!("/endpoints/{endpoint}/{action}");
        let response = with(&app, Method::POST, &path, ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Calls that change nothing leave nothing: a second enable, an unknown
    // user's delete, a bad body.
    let path = format!("/endpoints/{endpoint}/enable");
    assert_eq!(
        with(&app, Method::POST, &path, ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let path = format!("/users/{}", uuid::Uuid::new_v4());
    assert_eq!(
        with(&app, Method::DELETE, &path, CLIENT_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let response = with(&app, Method::POST, "/users", CLIENT_TOKEN)
        .json(&json!({"first_name": ""}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());

    let (text, entries) = audit(&app, "").await;
    assert!(
        !text.contains(CLIENT_TOKEN) && !text.contains(ADMIN_TOKEN),
        "{text}"
    );
    // The first entry is the start-up's: the plugin directory's birthday.
    assert_eq!(
        (
            &entries[0]["action"],
            &entries[0]["actor"],
            &entries[0]["target"]
        ),
        (
            &json!("type.load"),
            &json!("plugin-dir"),
            &json!("birthday")
        )
    );
    let entries = &entries[1..];
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("user.create", client.as_str(), user_id.as_str()),
        ("user.update", &client, &user_id),
        ("users.import", &client, "users"),
        ("event.retry", &admin, &event_id),
        ("user.delete", &client, &user_id),
        ("type.load", &admin, "anniversary"),
        ("type.replace", &admin, "anniversary"),
        ("type.delete", &admin, "anniversary"),
        ("endpoint.update", &admin, &endpoint),
        ("endpoint.disable", &admin, &endpoint),
        ("endpoint.enable", &admin, &endpoint),
    ];
    assert_eq!(seen, expected, "{entries:#?}");
    let import = &entries[2]["detail"];
    assert_eq!(
        (&import["imported"], &import["rejected"]),
        (&json!(2), &json!(1)),
        "{import}"
    );
    assert_eq!(entries[6]["detail"]["source"], "api");
    assert_eq!(entries[8]["detail"]["rate_per_s"], 20.0);
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");

    // Paged like GET /users.
    let (_, page) = audit(&app, &format!("?after={}&limit=2", ids[2])).await;
    let page_ids: Vec<i64> = page.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(page_ids, ids[3..5]);
    let response = with(&app, Method::GET, "/audit?after=x", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["field"], "after");
    // The admin's route only.
    let response = with(&app, Method::GET, "/audit", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(app.get("/audit").await.status(), 401);
}

#[tokio::test]
async fn a_change_whose_transaction_fails_leaves_no_entry_and_an_entry_never_stands_alone() {
    let app = spawn_app_with(|_| {}).await;
    let user = app.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap().to_string();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(before, 2, "the start-up's birthday, and the create");

    // The update's transaction fails at commit, after its entry was
    // written: a deferred constraint trigger refuses it.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE CONSTRAINT TRIGGER refuse_update AFTER UPDATE ON users \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut changed = ada();
    changed["first_name"] = json!("Augusta");
    let response = app.put_json(&format!("/users/{user_id}"), &changed).await;
    assert_eq!(response.status(), 500);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(after, before, "no entry for a change that did not happen");
    assert_eq!(
        app.get(&format!("/users/{user_id}"))
            .await
            .json::<Value>()
            .await
            .unwrap()["first_name"],
        "Ada"
    );

    // And the other way: an entry that cannot be written takes its change
    // with it.
    sqlx::raw_sql(
        "DROP TRIGGER refuse_update ON users; \
         CREATE TRIGGER refuse_entry BEFORE INSERT ON audit_log \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let response = app.delete(&format!("/users/{user_id}")).await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        app.get(&format!("/users/{user_id}")).await.status(),
        200,
        "still there"
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn open_client_routes_are_anonymous_and_the_plugin_directory_is_plugin_dir() {
    let app = spawn_app_with(|s| s.api_tokens = None).await;
    let user = app.create_user(&ada()).await;
    // A file dropped into the plugin directory is published by the
    // directory, and says so.
    let dir = app.settings.plugin_dir.clone();
    std::fs::write(
        dir.join("anniversary.wasm"),
        plugin_bytes("kairos-anniversary"),
    )
    .unwrap();
    app.event_types.sync_from_dir("anniversary").await;
    let (_, entries) = audit(&app, "").await;
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("type.load", "plugin-dir", "birthday"),
            ("user.create", "anonymous", user["id"].as_str().unwrap()),
            ("type.load", "plugin-dir", "anniversary"),
        ]
    );
    assert_eq!(entries[2]["detail"]["source"], "directory");
}

#[tokio::test]
async fn kairos_audit_prints_the_log_as_a_table() {
    let app = spawn_app_with(|_| {}).await;
    let user = app.create_user(&ada()).await;
    let user_id = user["id"].as_str().unwrap();
    // Run off the test's runtime, which serves the host.
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kairos"))
            .arg("audit")
            .args(["--url", &app.base])
            .args(args)
            .env_remove("KAIROS_ADMIN_TOKEN")
            .output()
    };

    let all = run(&["--token", ADMIN_TOKEN]).await.unwrap();
    assert!(all.status.success(), "{all:?}");
    let text = String::from_utf8(all.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("DETAIL"),
        "{text}"
    );
    assert!(
        lines[1].contains("plugin-dir") && lines[1].contains("type.load"),
        "{text}"
    );
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        cells[3..],
        ["anonymous", "user.create", user_id, "{}"],
        "{text}"
    );

    // A page of one says where the next starts.
    let one = run(&["--token", ADMIN_TOKEN, "--limit", "1"])
        .await
        .unwrap();
    let text = String::from_utf8(one.stdout).unwrap();
    assert!(
        text.contains("type.load") && !text.contains("user.create"),
        "{text}"
    );
    assert!(
        text.ends_with("(more may follow: kairos audit --after 1)\n"),
        "{text}"
    );
    let rest = run(&["--token", ADMIN_TOKEN, "--after", "1"])
        .await
        .unwrap();
    let text = String::from_utf8(rest.stdout).unwrap();
    assert!(
        text.contains("user.create") && !text.contains("type.load"),
        "{text}"
    );

    // Without the admin token: the host's refusal, exit 2.
    let refused = run(&[]).await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let error = String::from_utf8(refused.stderr).unwrap();
    assert!(error.contains("401"), "{error}");
}
