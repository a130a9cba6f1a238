//! Who may call what, and where webhooks may go: client routes take a
//! client or the admin token, admin routes only the admin token, open routes
//! none, and a refused request writes nothing (its body is read and
//! discarded, so that its sender gets the refusal, not a closed connection);
//! webhooks reach private, link-local or loopback addresses only when the
//! operator allows them.

use crate::helpers::{
    ADMIN_TOKEN, TestApp, ada, plugin_bytes, spawn_app, spawn_app_with, urlencode,
};
use kairos::outbound::AllowList;
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
        "/openapi.json",
        "/event-types",
        "/event-types/birthday",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}

/// A refused request is answered before its body is read, and its body is
/// then read and dropped, so the connection stays usable: here the answer
/// arrives while the body is still unsent, and a second request on the same
/// connection is answered too. Were the body left unread, the host would
/// close the connection after the first answer, and a client still writing
/// its body (`kairos import`) would see "broken pipe" instead of the `401`.
#[tokio::test]
async fn a_refused_request_is_answered_before_its_body_and_keeps_its_connection() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.into())).await;
    let host = app.base.trim_start_matches("http://");
    let body = format!("{}\n", ada()).repeat(200);
    let head = |token: &str| {
        format!(
            "POST /users/import HTTP/1.1\r\nhost: {host}\r\n{token}\
             content-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
    };
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(head("").as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(first.contains("token"), "{first}");

    stream.write_all(body.as_bytes()).await.unwrap();
    let wrong = format!("authorization: Bearer {CLIENT_TOKEN}-wrong\r\n");
    stream.write_all(head(&wrong).as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 401"), "{second}");
    assert_eq!(users_count(&app).await, 0);
}

/// One HTTP/1.1 response with a `content-length`, read from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if bytes.len() >= end + 4 + length {
                return text;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed after {text:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn without_client_tokens_a_loopback_host_serves_client_routes_openly() {
    let app = spawn_app_with(|s| s.api_tokens = None).await;
    assert!(app.settings.bind.ip().is_loopback());
    assert_eq!(app.post_json("/users", &ada()).await.status(), 201);
}

/// `PUT /event-types/anniversary?webhook_url=URL` with the admin token.
async fn put_anniversary_with_webhook(app: &TestApp, url: &str) -> reqwest::Response {
    app.put_type(
        "anniversary",
        &format!("?webhook_url={}", urlencode(url)),
        plugin_bytes("kairos-anniversary"),
    )
    .await
}

#[tokio::test]
async fn a_webhook_url_resolving_to_link_local_or_private_is_refused_unless_allowed() {
    let app = spawn_app().await;
    for (url, range) in [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.1/hook", "private"),
        ("http://[fd00:ec2::254]/hook", "unique local"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
    ] {
        let response = put_anniversary_with_webhook(&app, url).await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], "webhook_url", "{url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("not allowed") && error.contains(range),
            "{url}: {error}"
        );
    }
    assert!(app.registry.get("anniversary").is_none(), "nothing loaded");
    // Loopback is allowed by default, by address and by name.
    let response = put_anniversary_with_webhook(&app, "http://localhost:9/hook").await;
    assert_eq!(response.status(), 201);

    let allowing = spawn_app_with(|s| s.webhook_allow = "10.0.0.0/8".parse().unwrap()).await;
    let response = put_anniversary_with_webhook(&allowing, "http://10.0.0.1/hook").await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let response =
        put_anniversary_with_webhook(&allowing, "http://169.254.169.254/latest/meta-data").await;
    assert_eq!(response.status(), 400, "only what is listed is allowed");
}

#[tokio::test]
async fn an_event_whose_webhook_goes_to_a_refused_address_fails_at_once_without_a_connection() {
    // `none`: loopback is refused too. The receiver's URL names it by
    // address (checked before sending) or by name (checked by the resolver).
    for (host, refusal) in [
        ("127.0.0.1", "address not allowed: 127.0.0.1 is in loopback"),
        ("localhost", "address not allowed: localhost resolves to "),
    ] {
        let app = spawn_app_with(|s| {
            s.webhook_allow = AllowList::none();
            s.webhook_url = s.webhook_url.as_ref().map(|u| u.replace("127.0.0.1", host));
            s.claimer = true;
        })
        .await;
        let (_, event_id) = app.ada_with_event().await;
        app.make_due(&event_id).await;
        let failed = app.wait_for_status(&event_id, "failed").await;
        assert_eq!(failed["attempts"], 1, "not retried: {failed}");
        let error = failed["last_error"].as_str().unwrap();
        assert!(error.starts_with(refusal), "{host}: {error}");
        assert!(error.contains("KAIROS_WEBHOOK_ALLOW"), "{error}");
        assert!(app.receiver.received().is_empty(), "no connection was made");
        let attempts: Value = app
            .get(&format!("/events/{event_id}/attempts"))
            .await
            .json()
            .await
            .unwrap();
        let attempts = attempts.as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0]["outcome"], "refused", "{host}: {attempts:?}");
        assert_eq!(
            attempts[0]["status"],
            Value::Null,
            "no answer: {attempts:?}"
        );
        assert!(
            attempts[0]["error"].as_str().unwrap().starts_with(refusal),
            "{attempts:?}"
        );
    }
}
