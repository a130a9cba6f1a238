//! Who may call what: client routes take a client or the admin token, admin
//! routes only the admin token, open routes none; a refused request writes
//! nothing and its body is not read.

use crate::helpers::{ADMIN_TOKEN, TestApp, ada, plugin_bytes, spawn_app_with};
use serde_json::Value;

const CLIENT_TOKEN: &str = "client-token-1";

async fn users_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn assert_json_401(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("token"),
        "{what}: {body}"
    );
    assert!(body.get("field").is_some(), "{what}: {body}");
}

#[tokio::test]
async fn a_client_request_without_a_token_is_401_and_writes_nothing() {
    let app = spawn_app_with(|s| s.api_tokens = Some(format!("other-token, {CLIENT_TOKEN}"))).await;
    let post = |token: Option<&str>| {
        let mut request = app.http.post(app.url("/users")).json(&ada());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_json_401(post(None).await.unwrap(), "no token").await;
    assert_json_401(post(Some("wrong")).await.unwrap(), "wrong token").await;
    assert_eq!(users_count(&app).await, 0, "nothing written");

    // Refused before the body is read: an oversized body is still a 401.
    let response = app
        .http
        .post(app.url("/users"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1_100_000])
        .send()
        .await
        .unwrap();
    assert_json_401(response, "oversized body without a token").await;

    let created = post(Some(CLIENT_TOKEN)).await.unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    let id = user["id"].as_str().unwrap();
    let admin = post(Some(ADMIN_TOKEN)).await.unwrap();
    assert_eq!(admin.status(), 201, "the admin token is a client token too");
    assert_eq!(users_count(&app).await, 2);

    for path in [
        format!("/users/{id}"),
        format!("/users/{id}/events"),
        "/users".to_string(),
        "/events".to_string(),
    ] {
        let response = app.get(&path).await;
        assert_json_401(response, &path).await;
        let response = app
            .http
            .get(app.url(&path))
            .bearer_auth(CLIENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = app.delete(&format!("/users/{id}")).await;
    assert_json_401(response, "delete without a token").await;
    assert_eq!(users_count(&app).await, 2);
}

#[tokio::test]
async fn a_client_token_cannot_use_admin_routes_and_open_routes_need_none() {
    let app = spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.into())).await;
    let response = app
        .http
        .put(app.url("/event-types/anniversary"))
        .bearer_auth(CLIENT_TOKEN)
        .header("content-type", "application/wasm")
        .body(plugin_bytes("kairos-anniversary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    assert!(app.registry.get("anniversary").is_none());
    let response = app
        .http
        .delete(app.url("/event-types/birthday"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(app.registry.get("birthday").is_some());

    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/event-types",
        "/event-types/birthday",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn without_client_tokens_a_loopback_host_serves_client_routes_openly() {
    let app = spawn_app_with(|s| s.api_tokens = None).await;
    assert!(app.settings.bind.ip().is_loopback());
    assert_eq!(app.post_json("/users", &ada()).await.status(), 201);
}
