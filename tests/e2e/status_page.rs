//! The status page in a real browser: Debian's headless Chromium, driven
//! over the DevTools protocol (chromiumoxide). It shows the API's counts,
//! no person's name or date without the admin token, and with the token a
//! failed event whose retry button puts it back to `pending`.

use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app};
use chromiumoxide::Page;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The system's Chromium (`scripts/test.sh` installs it when missing).
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
        .expect("a Chromium on PATH (scripts/test.sh installs Debian's `chromium`)")
}

async fn launch() -> (Browser, tokio::task::JoinHandle<()>) {
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .no_sandbox()
        .user_data_dir(profile)
        .window_size(1280, 1000)
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .build()
        .unwrap();
    let (browser, mut handler) = Browser::launch(config).await.expect("launch Chromium");
    let driver = tokio::spawn(async move {
        while let Some(event) = handler.next().await {
            if event.is_err() {
                break;
            }
        }
    });
    (browser, driver)
}

/// Evaluates `expression` in the page until it is `true`, for up to 15 s.
async fn until(page: &Page, what: &str, expression: &str) {
    for _ in 0..150 {
        let done = page
            .evaluate(expression)
            .await
            .ok()
            .and_then(|r| r.into_value::<bool>().ok())
            .unwrap_or(false);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let html = page.content().await.unwrap_or_default();
    panic!("the page never showed {what}:\n{html}");
}

async fn counts_on_page(page: &Page) -> BTreeMap<String, i64> {
    page.evaluate(
        "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-status]')]\
         .map(e => [e.dataset.status, Number(e.textContent)])))",
    )
    .await
    .unwrap()
    .into_value::<String>()
    .map(|text| serde_json::from_str(&text).unwrap())
    .unwrap()
}

async fn counts_from_api(app: &TestApp) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for status in ["pending", "processing", "delivered", "failed", "cancelled"] {
        let events: Vec<Value> = app
            .get(&format!("/events?status={status}&limit=1000"))
            .await
            .json()
            .await
            .unwrap();
        counts.insert(status.to_string(), events.len() as i64);
    }
    counts
}

#[tokio::test]
async fn the_status_page_shows_the_apis_counts_hides_people_and_retries_with_the_token() {
    let app = spawn_app().await;
    // Three delivered, one failed (a 400 is not retried), two pending, one
    // cancelled (its user deleted).
    let mut users = Vec::new();
    for (i, name) in [
        "Grace", "Edsger", "Barbara", "Frances", "Radia", "Ken", "Dennis",
    ]
    .iter()
    .enumerate()
    {
        let user = app
            .create_user(&json!({
                "first_name": name, "last_name": "Hopper", "timezone": "UTC",
                "dates": {"birthday": format!("1906-12-0{}", i + 1)},
            }))
            .await;
        users.push(user["id"].as_str().unwrap().to_string());
    }
    app.receiver.respond_with(&[400]);
    for user in &users[..4] {
        let event = app.events_of(user).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        app.make_due(&event).await;
    }
    assert_eq!(app.run_claimer_once().await, 4);
    assert_eq!(
        app.delete(&format!("/users/{}", users[6])).await.status(),
        204
    );
    let failed: Vec<Value> = app.get("/events?status=failed").await.json().await.unwrap();
    assert_eq!(failed.len(), 1);
    let failed_id = failed[0]["id"].as_str().unwrap().to_string();

    let (mut browser, driver) = launch().await;
    let page = browser.new_page(app.url("/")).await.unwrap();
    until(
        &page,
        "the counts",
        "document.querySelectorAll('[data-status]').length === 5",
    )
    .await;

    // The same counts as the API.
    let api = counts_from_api(&app).await;
    assert_eq!(api["delivered"], 3, "{api:?}");
    assert_eq!(counts_on_page(&page).await, api);

    // No person's name or date without the token, and no failures list.
    let html = page.content().await.unwrap();
    for secret in ["Grace", "Hopper", "1906-12", &users[0]] {
        assert!(
            !html.contains(secret),
            "{secret} on the page without the token"
        );
    }
    assert!(!html.contains(&failed_id));
    assert!(html.contains("data-endpoint"), "the endpoint is listed");
    assert!(html.contains("birthday"), "the type is listed");

    // It refreshes in place: a new delivery shows without a reload.
    let event = app.events_of(&users[4]).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.make_due(&event).await;
    assert_eq!(app.run_claimer_once().await, 1);
    page.evaluate("window.notReloaded = true").await.unwrap();
    until(
        &page,
        "four delivered",
        "document.querySelector('[data-status=delivered]').textContent === '4'",
    )
    .await;
    assert!(
        page.evaluate("window.notReloaded === true")
            .await
            .unwrap()
            .into_value::<bool>()
            .unwrap(),
        "the page reloaded instead of refreshing in place"
    );

    // With the admin token: the failure, its error and attempts, and a
    // retry button that puts it back to pending.
    page.find_element("input[name=token]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str(ADMIN_TOKEN)
        .await
        .unwrap()
        .press_key("Enter")
        .await
        .unwrap();
    until(
        &page,
        "the failures",
        "!!document.querySelector('#failures button.retry')",
    )
    .await;
    let html = page.content().await.unwrap();
    assert!(html.contains(&failed_id), "the failed event is listed");
    assert!(html.contains("HTTP 400"), "with its error");
    // And its attempt log: one attempt, answered 400, failed.
    let attempts = page
        .evaluate(format!(
            "Array.from(document.querySelectorAll(\"tr[data-attempts-of='{failed_id}'] li\"))\
                 .map(li => li.dataset.outcome + ' ' + li.textContent)"
        ))
        .await
        .unwrap()
        .into_value::<Vec<String>>()
        .unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(
        attempts[0].starts_with("failed #1") && attempts[0].contains("HTTP 400"),
        "{attempts:?}"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &shot)
        .await
        .unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    page.find_element(&format!("button.retry[data-event='{failed_id}']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &page,
        "no failure left",
        "!document.querySelector('#failures button.retry')",
    )
    .await;
    assert_eq!(app.event(&failed_id).await["status"], "pending");
    // Kept across refreshes, for this tab only.
    let kept = page
        .evaluate("sessionStorage.getItem('kairos-admin-token')")
        .await
        .unwrap()
        .into_value::<String>()
        .unwrap();
    assert_eq!(kept, ADMIN_TOKEN);

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    driver.abort();
}
