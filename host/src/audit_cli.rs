//! `kairos audit`: the host's audit log as a table, read page by page from
//! its `GET /audit`.

use crate::ahead_cli::success;
use crate::config::AuditArgs;
use anyhow::Context;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

/// The most entries one request asks for (the API's page limit).
const PAGE: u64 = 1000;

pub async fn run(args: &AuditArgs) -> ExitCode {
    match fetch(args).await {
        Ok(entries) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let _ = out.write_all(table(&entries).as_bytes());
            if let Some(last) = entries.last()
                && args.limit != 0
                && entries.len() as u64 == args.limit
            {
                let _ = writeln!(
                    out,
                    "(more may follow: kairos audit --after {})",
                    last["id"]
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kairos audit: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Every entry after `args.after`, up to `args.limit` (0: all).
async fn fetch(args: &AuditArgs) -> anyhow::Result<Vec<Value>> {
    let client = reqwest::Client::new();
    let base = format!("{}/audit", args.url.trim_end_matches('/'));
    let mut after = args.after;
    let mut entries = Vec::new();
    loop {
        let want = match args.limit {
            0 => PAGE,
            limit => (limit - entries.len() as u64).min(PAGE),
        };
        if want == 0 {
            return Ok(entries);
        }
        let mut url = reqwest::Url::parse(&base).context("--url")?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("limit", &want.to_string());
        let mut request = client.get(url);
        if let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("could not reach {base}"))?;
        let page: Vec<Value> = success(response).await?.json().await?;
        let full = page.len() as u64 == want;
        if let Some(last) = page.last() {
            after = last["id"].as_i64().context("an entry without an id")?;
        }
        entries.extend(page);
        if !full {
            return Ok(entries);
        }
    }
}

/// The entries as aligned columns: id, time (UTC, to the second), actor,
/// action, target and the detail as compact JSON.
pub fn table(entries: &[Value]) -> String {
    const HEADER: [&str; 6] = ["ID", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            let at = text("at");
            // RFC 3339 to the second: 2026-12-05T09:14:03
            let at = at.get(..19).unwrap_or(&at).replace('T', " ");
            [
                e["id"].to_string(),
                at,
                text("actor"),
                text("action"),
                text("target"),
                e["detail"].to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&HEADER);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(no entries)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_aligns_columns_and_keeps_the_detail_whole() {
        let entries = vec![
            json!({"id": 1, "at": "2026-12-05T09:14:03.123456Z", "actor": "ba7816bf8f01",
                   "action": "user.create", "target": "0193", "detail": {}}),
            json!({"id": 12, "at": "2026-12-05T09:15:00Z", "actor": "kairos",
                   "action": "endpoint.disable", "target": "ab12cd34",
                   "detail": {"reason": "failing"}}),
        ];
        let text = table(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID  AT                   ACTOR         ACTION"));
        assert!(lines[1].starts_with("1   2026-12-05 09:14:03  ba7816bf8f01  user.create "));
        assert!(
            lines[2].ends_with(r#"ab12cd34  {"reason":"failing"}"#),
            "{}",
            lines[2]
        );
        // Each column starts where its header does.
        let action = lines[0].find("ACTION").unwrap();
        assert!(lines[1][action..].starts_with("user.create"));
        assert!(lines[2][action..].starts_with("endpoint.disable"));
        assert_eq!(
            table(&[]),
            "ID  AT  ACTOR  ACTION  TARGET  DETAIL\n(no entries)\n"
        );
    }
}
