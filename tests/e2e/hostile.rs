//! Hostile input: thousands of generated requests against one running host
//! — malformed, truncated and deeply nested JSON, bytes that are not UTF-8,
//! wrong types, missing and unknown fields, unicode edges, over-long values,
//! bodies over the limit, ids that are not UUIDs, bad query parameters, bad
//! tokens, uploads that are not components, imports of nothing but bad
//! lines. Each is answered within `ANSWER_WITHIN` with the 4xx it should get,
//! as the JSON error shape naming the field when there is one, and writes
//! nothing. A failure prints the smallest request proptest shrank it to.

use crate::helpers::{ADMIN_TOKEN, TestApp, plugin_bytes, spawn_app_with, urlencode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT_TOKEN: &str = "hostile-client-token";
/// Generated requests per run; `KAIROS_HOSTILE_CASES` asks for more.
const CASES: u32 = 3000;
/// A host that has not answered by then is hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Stands for the id of the one user that exists, in a path.
const USER: &str = "{user}";
/// The body limit of JSON routes.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone, Debug)]
enum Auth {
    Client,
    Admin,
    Missing,
    /// An `Authorization` header with these bytes.
    Header(Vec<u8>),
}

/// What the error must say about the field.
#[derive(Clone, Debug, PartialEq)]
enum Field {
    Named(String),
    Null,
    /// Either; the status is what matters.
    Any,
}

#[derive(Clone)]
struct Case {
    kind: &'static str,
    method: Method,
    /// Path and query, percent-encoded; `USER` is replaced by the user's id.
    path: String,
    auth: Auth,
    content_type: &'static str,
    body: Option<Vec<u8>>,
    /// The statuses it may be answered with.
    statuses: &'static [u16],
    field: Field,
    /// For an import: the field each line's rejection names.
    lines: Vec<Field>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body.as_ref().map(|b| {
            let text = String::from_utf8_lossy(b);
            let shown: String = text.chars().take(300).collect();
            format!("{} bytes: {shown:?}", b.len())
        });
        f.debug_struct("Case")
            .field("kind", &self.kind)
            .field("request", &format!("{} {}", self.method, self.path))
            .field("auth", &self.auth)
            .field("body", &body)
            .field("statuses", &self.statuses)
            .field("field", &self.field)
            .finish()
    }
}

impl Case {
    fn new(kind: &'static str, method: Method, path: String) -> Self {
        Self {
            kind,
            method,
            path,
            auth: Auth::Client,
            content_type: "application/json",
            body: None,
            statuses: &[400],
            field: Field::Null,
            lines: Vec::new(),
        }
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    fn expect(mut self, statuses: &'static [u16], field: Field) -> Self {
        self.statuses = statuses;
        self.field = field;
        self
    }

    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
}

fn named(field: impl Into<String>) -> Field {
    Field::Named(field.into())
}

/// A valid user, which each body case breaks in one way.
fn grace() -> Value {
    json!({
        "first_name": "Grace",
        "last_name": "Hopper",
        "timezone": "America/New_York",
        "dates": {"birthday": "1906-12-09"},
        "attributes": {"email": "grace@example.com"}
    })
}

fn set(user: &mut Value, path: &str, value: Value) {
    match path.split_once('.') {
        Some((map, key)) => {
            user[map][key] = value;
        }
        None => user[path] = value,
    }
}

/// Any character, weighted towards the ones that break things: control and
/// format characters, the byte-order mark, the replacement character,
/// combining marks, right-to-left overrides, joiners, astral characters.
fn edge_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        3 => any::<char>(),
        1 => prop::sample::select(vec![
            '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{ad}', '\u{301}',
            '\u{200b}', '\u{200d}', '\u{202e}', '\u{2028}', '\u{fe0f}', '\u{feff}', '\u{fffd}',
            '\u{ffff}', '\u{1f469}', '\u{10ffff}', '"', '\\', '/', '%', '?', '#', '.', ' ',
        ]),
    ]
}

fn edge_string(len: std::ops::Range<usize>) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(edge_char(), len).prop_map(String::from_iter)
}

/// A string that is no control character's home: for keys and names that
/// must fail on their length alone.
fn printable(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(
        edge_char().prop_filter("printable", |c| !c.is_control()),
        len,
    )
    .prop_map(String::from_iter)
}

fn json_leaf() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

/// JSON of every kind but a string.
fn not_a_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_leaf(),
        prop::collection::vec(json_leaf(), 0..4).prop_map(Value::from),
        prop::collection::btree_map(edge_string(0..8), json_leaf(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
}

/// JSON of every kind but an object.
fn not_an_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_leaf(),
        edge_string(0..20).prop_map(Value::from),
        prop::collection::vec(json_leaf(), 0..4).prop_map(Value::from),
    ]
}

/// A user body broken in one way, and the field its error names.
fn broken_user() -> impl Strategy<Value = (&'static str, Value, Field)> {
    let string_field = prop::sample::select(vec![
        "first_name",
        "last_name",
        "timezone",
        "dates.birthday",
        "attributes.email",
    ]);
    let map_field = prop::sample::select(vec!["dates", "attributes"]);
    let name_field = prop::sample::select(vec!["first_name", "last_name"]);
    let required = prop::sample::select(vec!["first_name", "last_name", "timezone"]);
    let known = ["first_name", "last_name", "timezone", "dates", "attributes"];
    let control = prop::char::ranges(vec!['\u{0}'..='\u{1f}', '\u{7f}'..='\u{9f}'].into());
    let bad_key = prop_oneof![
        Just(String::new()),
        printable(101..140),
        (printable(0..5), control.clone(), printable(0..5))
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ];
    let broken = |kind: &'static str, status_field: fn(&str) -> Field| {
        move |(path, value): (&'static str, Value)| {
            let mut user = grace();
            set(&mut user, path, value);
            (kind, user, status_field(path))
        }
    };
    prop_oneof![
        (string_field, not_a_string()).prop_map(broken("wrong type", |p| named(p))),
        (map_field.clone(), not_an_object()).prop_map(broken("wrong type", |p| named(p))),
        required.prop_map(|field| {
            let mut user = grace();
            user.as_object_mut().unwrap().remove(field);
            ("missing field", user, named(field))
        }),
        edge_string(1..20)
            .prop_filter("unknown", move |k| !known.contains(&k.as_str()))
            .prop_map(|key| {
                let mut user = grace();
                user[&key] = json!("x");
                ("unknown field", user, named(key))
            }),
        // Rules: 422 from here on.
        (name_field.clone(), "[ \t\n\r\u{a0}\u{2003}\u{3000}]{0,6}").prop_map(|(f, v)| rule(
            f,
            Value::from(v),
            f
        )),
        (name_field.clone(), printable(201..260)).prop_map(|(f, v)| rule(
            f,
            Value::from(format!("x{v}x")),
            f
        )),
        (name_field, edge_string(0..10), control, edge_string(0..10))
            .prop_map(|(f, a, c, b)| rule(f, Value::from(format!("x{a}{c}{b}x")), f)),
        edge_string(0..30).prop_map(|s| rule(
            "timezone",
            Value::from(format!("Nowhere/{s}")),
            "timezone"
        )),
        prop_oneof![
            edge_string(0..12).prop_map(|s| format!("x{s}")),
            "[0-9]{4}-(00|1[3-9]|[2-9][0-9])-[0-2][0-9]",
            "[0-9]{4}-(0[1-9]|1[0-2])-(00|3[2-9]|[4-9][0-9])",
            "(19|20)[0-9][13579]-02-29",
            "(2[1-9]|[3-9][0-9])[0-9]{2}-0[1-9]-1[0-9]",
            "[0-9]{4}-[0-9]{2}-[0-9]{2} ?[0-9T:]{1,8}",
            "[0-9]{3}-[0-9]{2}-[0-9]{2}",
        ]
        .prop_map(|d| rule("dates.birthday", Value::from(d), "dates.birthday")),
        (map_field, bad_key).prop_map(|(map, key)| {
            let mut user = grace();
            let value = if map == "dates" { "1906-12-09" } else { "x" };
            user[map][&key] = json!(value);
            ("broken rule", user, named(format!("{map}.{key}")))
        }),
        (prop::char::range('a', 'z'), 10_001..10_100usize).prop_map(|(c, n)| rule(
            "attributes.email",
            Value::from(c.to_string().repeat(n)),
            "attributes.email"
        )),
        (edge_string(0..10), edge_string(0..10)).prop_map(|(a, b)| rule(
            "attributes.email",
            Value::from(format!("{a}\u{0}{b}")),
            "attributes.email"
        )),
    ]
}

fn rule(path: &str, value: Value, field: &str) -> (&'static str, Value, Field) {
    let mut user = grace();
    set(&mut user, path, value);
    ("broken rule", user, named(field))
}

/// Bytes that are not one JSON user: truncated, random, not UTF-8, nested
/// past any depth, followed by more.
fn malformed() -> impl Strategy<Value = (Vec<u8>, Field)> {
    let body = serde_json::to_vec(&grace()).unwrap();
    let cut = body.clone();
    let trailing = body.clone();
    prop_oneof![
        (0..body.len()).prop_map(move |n| (cut[..n].to_vec(), Field::Null)),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| (b, Field::Any)),
        prop::sample::select(vec![
            &br#""\ud800""#[..],
            br#""\udfff""#,
            br#""\ud83d\u0041""#,
            b"\"\xff\xfe\"",
            b"\"\xc3\x28\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xf4\x90\x80\x80\"",
        ])
        .prop_map(|value| {
            let mut bytes = br#"{"first_name":"#.to_vec();
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(br#","last_name":"Hopper","timezone":"UTC"}"#);
            (bytes, Field::Any)
        }),
        (
            129..100_000usize,
            prop::sample::select(vec!["[", "{\"a\":", "{\"dates\":"])
        )
            .prop_map(|(n, open)| (open.repeat(n).into_bytes(), Field::Any)),
        "[^ \t\r\n]{1,10}".prop_map(move |extra| {
            let mut bytes = trailing.clone();
            bytes.extend_from_slice(extra.as_bytes());
            (bytes, Field::Null)
        }),
    ]
}

fn body_route() -> impl Strategy<Value = (Method, &'static str)> {
    prop::sample::select(vec![
        (Method::POST, "/users"),
        (Method::PUT, "/users/{user}"),
    ])
}

fn body_cases() -> impl Strategy<Value = Case> {
    prop_oneof![
        6 => (body_route(), broken_user()).prop_map(|((method, path), (kind, user, field))| {
            let status: &'static [u16] = match kind {
                "broken rule" => &[422],
                _ => &[400],
            };
            Case::new(kind, method, path.into())
                .body(serde_json::to_vec(&user).unwrap())
                .expect(status, field)
        }),
        3 => (body_route(), malformed()).prop_map(|((method, path), (body, field))| {
            Case::new("malformed JSON", method, path.into())
                .body(body)
                .expect(&[400], field)
        }),
        1 => (body_route(), 0..65_536usize).prop_map(|((method, path), extra)| {
            let mut user = grace();
            user["attributes"]["note"] = json!("a".repeat(MAX_BODY + extra));
            Case::new("oversized", method, path.into())
                .body(serde_json::to_vec(&user).unwrap())
                .expect(&[413], Field::Null)
        }),
    ]
}

/// A path segment that is not a UUID (percent-encoded), or raw
/// percent-escapes that do not decode to UTF-8.
fn not_an_id() -> impl Strategy<Value = (String, Field)> {
    prop_oneof![
        edge_string(0..40).prop_map(|s| (urlencode(&format!("x{s}")), named("id"))),
        prop::collection::vec(0x80..=0xffu8, 1..6)
            .prop_map(|b| (b.iter().map(|b| format!("%{b:02X}")).collect(), Field::Any)),
    ]
}

fn id_cases() -> impl Strategy<Value = Case> {
    let route = prop::sample::select(vec![
        (Method::GET, "/users/{id}"),
        (Method::PUT, "/users/{id}"),
        (Method::DELETE, "/users/{id}"),
        (Method::GET, "/users/{id}/events"),
        (Method::POST, "/events/{id}/retry"),
    ]);
    let with_body = |case: Case| {
        if case.method == Method::PUT {
            case.body(serde_json::to_vec(&grace()).unwrap())
        } else {
            case
        }
    };
    prop_oneof![
        (route.clone(), not_an_id()).prop_map(move |((method, path), (id, field))| {
            with_body(Case::new("bad id", method, path.replace("{id}", &id)).expect(&[400], field))
        }),
        (route, any::<u128>()).prop_map(move |((method, path), n)| {
            let id = uuid::Uuid::from_u128(n).to_string();
            with_body(
                Case::new("unknown id", method, path.replace("{id}", &id))
                    .expect(&[404], Field::Null),
            )
        }),
    ]
}

/// Query parameters that break a rule, or that no route takes.
fn query_cases() -> impl Strategy<Value = Case> {
    let route = prop::sample::select(vec![
        ("/users", &["limit", "after"][..]),
        ("/events", &["status", "event_type", "limit"][..]),
    ]);
    let bad_limit = prop_oneof![
        edge_string(0..10).prop_map(|s| urlencode(&format!("x{s}"))),
        prop::collection::vec(0x80..=0xffu8, 1..6)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect()),
        (i64::MIN..=0).prop_map(|n| urlencode(&n.to_string())),
        (1001..=i64::MAX).prop_map(|n| n.to_string()),
        "[1-9][0-9]{19,30}",
        "[0-9]{1,3}\\.[0-9]",
        "%20[0-9]{1,3}",
    ];
    prop_oneof![
        (route.clone(), bad_limit).prop_map(|((path, _), limit)| {
            Case::new("bad query", Method::GET, format!("{path}?limit={limit}"))
                .expect(&[400], named("limit"))
        }),
        edge_string(0..40).prop_map(|s| {
            Case::new(
                "bad query",
                Method::GET,
                format!("/users?after=x{}", urlencode(&s)),
            )
            .expect(&[400], named("after"))
        }),
        edge_string(0..20).prop_map(|s| {
            Case::new(
                "bad query",
                Method::GET,
                format!("/events?status=x{}", urlencode(&s)),
            )
            .expect(&[400], named("status"))
        }),
        (route, edge_string(1..12), edge_string(0..12))
            .prop_filter("unknown", |((_, known), key, _)| !known
                .contains(&key.as_str()))
            .prop_map(|((path, _), key, value)| {
                let query = format!("{}={}", urlencode(&key), urlencode(&value));
                Case::new(
                    "unknown query parameter",
                    Method::GET,
                    format!("{path}?{query}"),
                )
                .expect(&[400], named(key))
            }),
    ]
}

/// No token, tokens this host does not know, client tokens on admin routes.
fn auth_cases() -> impl Strategy<Value = Case> {
    let route = prop::sample::select(vec![
        (Method::GET, "/users"),
        (Method::POST, "/users"),
        (Method::GET, "/users/{user}"),
        (Method::PUT, "/users/{user}"),
        (Method::DELETE, "/users/{user}"),
        (Method::POST, "/users/import"),
        (Method::GET, "/events"),
        (Method::PUT, "/event-types/birthday"),
        (Method::DELETE, "/event-types/birthday"),
    ]);
    let header_byte = prop_oneof![Just(b'\t'), 0x20..=0x7eu8, 0x80..=0xffu8];
    let wrong = prop_oneof![
        Just(Auth::Missing),
        edge_string(0..40)
            .prop_filter("printable", |s| s.chars().all(|c| !c.is_control()))
            .prop_map(|s| Auth::Header(format!("Bearer {s}").into_bytes())),
        prop::collection::vec(header_byte, 0..60).prop_map(Auth::Header),
    ]
    .prop_filter("not a token", |auth| match auth {
        Auth::Header(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            !text.contains(CLIENT_TOKEN) && !text.contains(ADMIN_TOKEN)
        }
        _ => true,
    });
    let user = serde_json::to_vec(&grace()).unwrap();
    let component = plugin_bytes("kairos-birthday");
    prop_oneof![
        (route, wrong).prop_map(move |((method, path), auth)| {
            body_for(
                Case::new("wrong token", method, path.into()),
                &user,
                &component,
            )
            .auth(auth)
            .expect(&[401], Field::Null)
        }),
        prop::sample::select(vec![Method::PUT, Method::DELETE]).prop_map(|method| {
            Case::new(
                "client token on an admin route",
                method,
                "/event-types/birthday".into(),
            )
            .expect(&[403], Field::Null)
        }),
    ]
}

/// Methods a route does not take: 405 in the error shape, with `Allow`.
fn method_cases() -> impl Strategy<Value = Case> {
    let route = prop::sample::select(vec![
        ("/users", &["GET", "POST"][..]),
        ("/users/{user}", &["GET", "PUT", "DELETE"][..]),
        ("/users/{user}/events", &["GET"][..]),
        ("/users/import", &["POST"][..]),
        ("/events", &["GET"][..]),
        ("/event-types", &["GET"][..]),
        ("/event-types/birthday", &["GET", "PUT", "DELETE"][..]),
        ("/health", &["GET"][..]),
        ("/openapi.json", &["GET"][..]),
    ]);
    let method = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::from_bytes(b"PURGE").unwrap(),
    ]);
    (route, method)
        .prop_filter("not taken", |((_, taken), method)| {
            !taken.contains(&method.as_str())
        })
        .prop_map(|((path, _), method)| {
            Case::new("wrong method", method, path.into())
                .auth(Auth::Admin)
                .expect(&[405], Field::Null)
        })
}

/// A valid body for the route, so only the token can be what is wrong.
fn body_for(case: Case, user: &[u8], component: &[u8]) -> Case {
    match (case.method.as_str(), case.path.as_str()) {
        ("PUT", "/event-types/birthday") => {
            let mut case = case.body(component.to_vec());
            case.content_type = "application/wasm";
            case
        }
        ("POST", "/users/import") => {
            let mut line = user.to_vec();
            line.push(b'\n');
            let mut case = case.body(line);
            case.content_type = "application/x-ndjson";
            case
        }
        ("POST", _) | ("PUT", _) => case.body(user.to_vec()),
        _ => case,
    }
}

/// Uploads that are not components, or bad names, settings and addresses.
fn upload_cases() -> impl Strategy<Value = Case> {
    let component = plugin_bytes("kairos-birthday");
    let cut = component.clone();
    let whole = component.clone();
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..4096),
        (0..component.len()).prop_map(move |n| {
            let mut bytes = cut[..n].to_vec();
            bytes.extend_from_slice(b"\0asm");
            bytes
        }),
    ];
    let name = prop::sample::select(vec!["birthday", "anniversary", "hostile-new"]);
    let upload = |path: String, body: Vec<u8>, statuses: &'static [u16], field: Field| {
        let mut case = Case::new("bad upload", Method::PUT, path)
            .auth(Auth::Admin)
            .body(body)
            .expect(statuses, field);
        case.content_type = "application/wasm";
        case
    };
    let bad_name = edge_string(1..30).prop_filter("not a type name", |name: &String| {
        name.chars().any(|c| c != '.')
            && !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    });
    prop_oneof![
        (name, bytes).prop_map(move |(name, body)| {
            upload(
                format!("/event-types/{name}"),
                body,
                &[400, 422],
                Field::Any,
            )
        }),
        bad_name.prop_map(move |name| {
            upload(
                format!("/event-types/{}", urlencode(&name)),
                whole.clone(),
                &[400],
                named("name"),
            )
        }),
        edge_string(0..20).prop_map(move |s| {
            let query = format!("config.send_at=x{}", urlencode(&s));
            upload(
                format!("/event-types/birthday?{query}"),
                component.clone(),
                &[400, 422],
                Field::Any,
            )
        }),
        prop_oneof![
            edge_string(0..20).prop_map(|s| format!("x{s}")),
            Just("http://10.0.0.1/hook".to_string()),
            Just("ftp://127.0.0.1/".to_string()),
            Just("http://169.254.169.254/latest/meta-data".to_string()),
        ]
        .prop_map(|url| {
            let query = format!("webhook_url={}", urlencode(&url));
            Case::new(
                "bad upload",
                Method::PUT,
                format!("/event-types/birthday?{query}"),
            )
            .auth(Auth::Admin)
            .expect(&[400, 422], named("webhook_url"))
        }),
    ]
}

/// An import of bad lines only: answered 200, every line rejected with
/// its field named, no user written.
fn import_cases() -> impl Strategy<Value = Case> {
    let line = prop_oneof![
        broken_user().prop_map(|(_, user, field)| (serde_json::to_vec(&user).unwrap(), field)),
        malformed().prop_filter("one line, not blank", |(bytes, _)| {
            !bytes.contains(&b'\n') && !bytes.trim_ascii().is_empty() && bytes.len() < 10_000
        }),
    ];
    prop::collection::vec(line, 1..6).prop_map(|lines| {
        let mut body = Vec::new();
        for (bytes, _) in &lines {
            body.extend_from_slice(bytes);
            body.push(b'\n');
        }
        let mut case = Case::new("bad import", Method::POST, "/users/import".into())
            .body(body)
            .expect(&[200], Field::Null);
        case.content_type = "application/x-ndjson";
        case.lines = lines.into_iter().map(|(_, field)| field).collect();
        case
    })
}

fn hostile_request() -> impl Strategy<Value = Case> {
    prop_oneof![
        8 => body_cases(),
        3 => id_cases(),
        3 => query_cases(),
        2 => auth_cases(),
        1 => upload_cases(),
        2 => import_cases(),
        1 => method_cases(),
    ]
}

/// Everything a request could have written.
async fn written(app: &TestApp) -> Value {
    let row: (Value,) = sqlx::query_as(
        "SELECT json_build_object(
           'users', (SELECT count(*) FROM users),
           'users_changed', (SELECT max(updated_at) FROM users),
           'events', (SELECT count(*) FROM events),
           'history', (SELECT count(*) FROM event_history),
           'event_types', (SELECT max(generation) FROM event_types),
           'components', (SELECT count(*) FROM components))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    row.0
}

async fn check(
    app: &TestApp,
    user_id: &str,
    before: &Value,
    case: Case,
) -> Result<u16, TestCaseError> {
    let mut request = app
        .http
        .request(
            case.method.clone(),
            app.url(&case.path.replace(USER, user_id)),
        )
        .timeout(ANSWER_WITHIN);
    request = match &case.auth {
        Auth::Client => request.bearer_auth(CLIENT_TOKEN),
        Auth::Admin => request.bearer_auth(ADMIN_TOKEN),
        Auth::Missing => request,
        Auth::Header(bytes) => request.header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(bytes).unwrap(),
        ),
    };
    if let Some(body) = &case.body {
        request = request
            .header("content-type", case.content_type)
            .body(body.clone());
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer within {ANSWER_WITHIN:?}: {e}")))?;
    let status = response.status().as_u16();
    let json_type = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let allow = response.headers().get("allow").cloned();
    let text = response.text().await.unwrap_or_default();
    prop_assert!(case.statuses.contains(&status), "answered {status}: {text}");
    if status == 405 {
        prop_assert!(allow.is_some(), "405 without an Allow header");
    }
    prop_assert!(json_type, "answered {status} without a JSON body: {text:?}");
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {text:?}")))?;
    if status >= 400 {
        prop_assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error message: {body}"
        );
        prop_assert!(
            body["field"].is_string() || body["field"].is_null(),
            "{body}"
        );
        check_field(&case.field, &body["field"], &body)?;
    } else {
        prop_assert_eq!(&body["imported"], &json!(0), "{}", body);
        prop_assert_eq!(
            &body["rejected_count"],
            &json!(case.lines.len()),
            "{}",
            body
        );
        let rejected = body["rejected"].as_array().unwrap();
        for (line, expected) in case.lines.iter().enumerate() {
            prop_assert_eq!(&rejected[line]["line"], &json!(line + 1), "{}", body);
            check_field(expected, &rejected[line]["field"], &body)?;
        }
    }
    let after = written(app).await;
    prop_assert_eq!(before, &after, "the request wrote something");
    Ok(status)
}

fn check_field(expected: &Field, field: &Value, body: &Value) -> Result<(), TestCaseError> {
    match expected {
        Field::Named(name) => prop_assert_eq!(field, &json!(name), "{}", body),
        Field::Null => prop_assert!(field.is_null(), "no field to name: {body}"),
        Field::Any => {}
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_is_refused_in_time_with_its_field_named_and_writes_nothing() {
    let app = spawn_app_with(|s| s.api_tokens = Some(CLIENT_TOKEN.into())).await;
    let created = app
        .http
        .post(app.url("/users"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&grace())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    let user_id = user["id"].as_str().unwrap().to_string();
    let before = written(&app).await;
    assert_eq!(before["events"], 1, "{before}");
    let cases = std::env::var("KAIROS_HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    };
    let seen = Arc::new(Mutex::new(BTreeMap::<(&'static str, u16), u32>::new()));
    let handle = tokio::runtime::Handle::current();
    let (app, outcome) = tokio::task::spawn_blocking({
        let seen = seen.clone();
        move || {
            let mut runner = TestRunner::new(config);
            let outcome = runner.run(&hostile_request(), |case| {
                let kind = case.kind;
                let status = handle.block_on(check(&app, &user_id, &before, case))?;
                *seen.lock().unwrap().entry((kind, status)).or_default() += 1;
                Ok(())
            });
            (app, outcome)
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    eprintln!("{cases} hostile requests (kind, status: count): {seen:?}");
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Every kind of hostility was tried, and the user is as it was.
    let kinds: std::collections::BTreeSet<_> = seen.keys().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds.len(), 15, "{kinds:?}");
    let now: Value = app
        .http
        .get(app.url(&format!("/users/{}", user["id"].as_str().unwrap())))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now, user);
    app.stop().await;
}
