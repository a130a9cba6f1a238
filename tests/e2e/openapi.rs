//! `GET /openapi.json`: the document describes exactly the routes the host
//! serves, with the token each takes, and what the host answers matches it.

use crate::helpers::{ADMIN_TOKEN, TestApp, ada, spawn_app_with};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const CLIENT_TOKEN: &str = "openapi-client-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Client,
    Admin,
}

/// Every route the host serves: method, path template, who may call it.
const ROUTES: [(&str, &str, Kind); 25] = [
    ("get", "/users", Kind::Client),
    ("post", "/users", Kind::Client),
    ("get", "/users/{id}", Kind::Client),
    ("put", "/users/{id}", Kind::Client),
    ("delete", "/users/{id}", Kind::Client),
    ("get", "/users/{id}/events", Kind::Client),
    ("post", "/users/import", Kind::Client),
    ("get", "/events", Kind::Client),
    ("post", "/events/{id}/retry", Kind::Client),
    ("get", "/events/{id}/attempts", Kind::Client),
    ("get", "/simulate", Kind::Client),
    ("get", "/event-types", Kind::Open),
    ("get", "/event-types/{name}", Kind::Open),
    ("put", "/event-types/{name}", Kind::Admin),
    ("delete", "/event-types/{name}", Kind::Admin),
    ("get", "/endpoints", Kind::Admin),
    ("put", "/endpoints/{id}", Kind::Admin),
    ("post", "/endpoints/{id}/enable", Kind::Admin),
    ("post", "/endpoints/{id}/disable", Kind::Admin),
    ("get", "/audit", Kind::Admin),
    ("get", "/", Kind::Open),
    ("get", "/health", Kind::Open),
    ("get", "/ready", Kind::Open),
    ("get", "/metrics", Kind::Open),
    ("get", "/openapi.json", Kind::Open),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

async fn spawn() -> TestApp {
    spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.into())).await
}

/// The document, fetched without a token.
async fn document(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// The statuses the document lists for an operation.
fn documented_statuses(doc: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    operation(doc, method, path)["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

/// The security schemes an operation accepts (empty: open).
fn schemes(doc: &Value, method: &str, path: &str) -> BTreeSet<String> {
    operation(doc, method, path)["security"]
        .as_array()
        .map(|requirements| {
            requirements
                .iter()
                .flat_map(|r| r.as_object().unwrap().keys().cloned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_routes_served() {
    let app = spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    let bearer = |name: &str| &doc["components"]["securitySchemes"][name];
    for name in ["client_token", "admin_token"] {
        assert_eq!(bearer(name)["type"], "http", "{name}");
        assert_eq!(bearer(name)["scheme"], "bearer", "{name}");
    }

    for (method, path, kind) in ROUTES {
        let wanted: BTreeSet<String> = match kind {
            Kind::Open => BTreeSet::new(),
            Kind::Client => ["client_token", "admin_token"].map(String::from).into(),
            Kind::Admin => ["admin_token"].map(String::from).into(),
        };
        assert_eq!(schemes(&doc, method, path), wanted, "{method} {path}");
        let statuses = documented_statuses(&doc, method, path);
        if kind != Kind::Open {
            assert!(statuses.contains(&401), "{method} {path}: {statuses:?}");
        }
        if kind == Kind::Admin {
            assert!(statuses.contains(&403), "{method} {path}: {statuses:?}");
        }

        // Served: placeholders that are not ids get the handler's own
        // answer, never the router's 404 or 405.
        let url = app.url(
            &path
                .replace("{id}", "placeholder")
                .replace("{name}", "no-such-type"),
        );
        let mut request = app
            .http
            .request(method.to_uppercase().parse().unwrap(), url);
        request = match kind {
            Kind::Open => request,
            Kind::Client => request.bearer_auth(CLIENT_TOKEN),
            Kind::Admin => request.bearer_auth(ADMIN_TOKEN),
        };
        let body = match (method, path) {
            ("post", "/users/import") => Some(("application/x-ndjson", "")),
            ("put", "/event-types/{name}") => Some(("application/wasm", "")),
            ("post" | "put", _) => Some(("application/json", "{}")),
            _ => None,
        };
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !body.contains("route not found"),
            "{method} {path} is not routed: {status} {body}"
        );
        assert!(
            statuses.contains(&status),
            "{method} {path} answered {status}, documented {statuses:?}: {body}"
        );
    }

    // A method the document does not list is not served.
    let response = app
        .http
        .patch(app.url("/users"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

/// `schema` with every `$ref` to `#/components/schemas/...` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "no schema {name}");
            resolve(doc, target)
        }
        None => schema,
    }
}

fn json_type_matches(wanted: &str, value: &Value) -> bool {
    match wanted {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// What about `value` breaks `schema`: its type, required and declared
/// properties, array items, `oneOf`/`anyOf`/`allOf`, and
/// `additionalProperties`.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut found = Vec::new();
    for key in ["oneOf", "anyOf"] {
        if let Some(choices) = schema.get(key).and_then(Value::as_array)
            && !choices
                .iter()
                .any(|c| violations(doc, c, value, at).is_empty())
        {
            found.push(format!("{at}: {value} matches no {key} of {schema}"));
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            found.extend(violations(doc, part, value, at));
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| json_type_matches(t, value)) {
        found.push(format!("{at}: {value} is not {types:?}"));
        return found;
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                found.push(format!("{at}: required property {name} is missing"));
            }
        }
        for (key, item) in object {
            let here = format!("{at}.{key}");
            match (
                properties.and_then(|p| p.get(key)),
                schema.get("additionalProperties"),
            ) {
                (Some(property), _) => found.extend(violations(doc, property, item, &here)),
                (None, Some(Value::Bool(false))) => {
                    found.push(format!("{here}: not a documented property"))
                }
                (None, Some(extra @ Value::Object(_))) => {
                    found.extend(violations(doc, extra, item, &here))
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            found.extend(violations(doc, items, item, &format!("{at}[{i}]")));
        }
    }
    found
}

/// Asserts `response` is one the document lists for `method path`, and
/// that its JSON body (if the document gives one) fits the schema.
async fn assert_documented(
    doc: &Value,
    method: &str,
    path: &str,
    response: reqwest::Response,
) -> Value {
    let status = response.status().as_u16();
    let documented = &operation(doc, method, path)["responses"][status.to_string()];
    let text = response.text().await.unwrap();
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which the document does not list: {text}"
    );
    let Some(schema) = documented
        .get("content")
        .and_then(|c| c.get("application/json"))
        .map(|c| &c["schema"])
    else {
        assert!(
            text.is_empty(),
            "{method} {path} {status}: undocumented body {text}"
        );
        return Value::Null;
    };
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
    let problems = violations(doc, schema, &body, "body");
    assert!(
        problems.is_empty(),
        "{method} {path} {status}: {problems:#?}\n{body}"
    );
    body
}

#[tokio::test]
async fn what_the_host_answers_matches_the_document() {
    let app = spawn().await;
    let doc = document(&app).await;
    let call = |method: &str, path: &str| {
        app.http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(CLIENT_TOKEN)
    };

    let response = call("POST", "/users").json(&ada()).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let user = assert_documented(&doc, "post", "/users", response).await;
    let id = user["id"].as_str().unwrap();

    let response = call("GET", &format!("/users/{id}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_documented(&doc, "get", "/users/{id}", response).await;

    let response = call("GET", "/users").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_documented(&doc, "get", "/users", response).await;

    let response = call("PUT", &format!("/users/{id}"))
        .json(&ada())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_documented(&doc, "put", "/users/{id}", response).await;

    // Bad input: malformed (400), a broken rule (422), unknown (404), no token (401).
    let response = call("POST", "/users")
        .header("content-type", "application/json")
        .body("{\"first_name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_documented(&doc, "post", "/users", response).await;
    let mut mars = ada();
    mars["timezone"] = json!("Mars/Olympus");
    let response = call("POST", "/users").json(&mars).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let error = assert_documented(&doc, "post", "/users", response).await;
    assert_eq!(error["field"], "timezone");
    let unknown = uuid::Uuid::new_v4();
    let response = call("GET", &format!("/users/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_documented(&doc, "get", "/users/{id}", response).await;
    let response = app.get("/events").await;
    assert_eq!(response.status(), 401);
    assert_documented(&doc, "get", "/events", response).await;
    let response = call("POST", "/users")
        .header("content-type", "application/json")
        .body(vec![b' '; 1_100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_documented(&doc, "post", "/users", response).await;

    // Events: the user's, everyone's, and a retry of one that is not failed.
    let response = call("GET", &format!("/users/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = assert_documented(&doc, "get", "/users/{id}/events", response).await;
    let event_id = events[0]["id"].as_str().expect("ada has an event");
    let response = call("GET", "/events").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_documented(&doc, "get", "/events", response).await;
    let response = call("POST", &format!("/events/{event_id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_documented(&doc, "post", "/events/{id}/retry", response).await;

    let ndjson = format!(
        "{}\n{{\"first_name\": \"\"}}\n",
        serde_json::to_string(&ada()).unwrap()
    );
    let response = call("POST", "/users/import")
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report = assert_documented(&doc, "post", "/users/import", response).await;
    assert_eq!(report["imported"], 1, "{report}");

    // Open routes.
    for path in ["/event-types", "/event-types/birthday", "/health", "/ready"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let template = path.replace("birthday", "{name}");
        assert_documented(&doc, "get", &template, response).await;
    }

    let response = call("DELETE", &format!("/users/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_documented(&doc, "delete", "/users/{id}", response).await;
}
