//! `kairos simulate` and `kairos plugin diff`: the API's simulation and dry
//! run from the command line, against a running host.

use crate::config::SimulateArgs;
use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

/// How `kairos simulate` prints its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ndjson,
    Csv,
}

/// The columns of a simulation line, in the API's order.
const COLUMNS: [&str; 7] = [
    "user_id",
    "event_type",
    "event_type_version",
    "occurrence",
    "timezone",
    "due_at",
    "text",
];

pub async fn simulate(args: &SimulateArgs) -> ExitCode {
    let stdout = std::io::stdout();
    match run_simulate(args, &mut stdout.lock()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kairos simulate: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Streams the simulation to `out`; returns the number of messages.
async fn run_simulate(args: &SimulateArgs, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut endpoint = reqwest::Url::parse(&format!("{}/simulate", args.url.trim_end_matches('/')))
        .context("--url")?;
    {
        let mut query = endpoint.query_pairs_mut();
        query.append_pair("from", &instant(&args.from));
        query.append_pair("to", &instant(&args.to));
        if let Some(name) = &args.event_type {
            query.append_pair("event_type", name);
        }
        if let Some(id) = &args.user_id {
            query.append_pair("user_id", id);
        }
    }
    let mut request = reqwest::Client::new().get(endpoint.clone());
    if let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("asking {endpoint}"))?;
    let response = success(response).await?;
    let spinner = spinner("simulating");
    if args.format == Format::Csv {
        writeln!(out, "{}", COLUMNS.join(","))?;
    }
    let mut lines = 0u64;
    let mut pending = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the simulation stopped part-way (the host's log says why)")?;
        pending.extend_from_slice(&chunk);
        let complete = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => pending.drain(..=end).collect::<Vec<u8>>(),
            None => continue,
        };
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match args.format {
                Format::Ndjson => {
                    out.write_all(line)?;
                    out.write_all(b"\n")?;
                }
                Format::Csv => {
                    let value: Value =
                        serde_json::from_slice(line).context("a line that is not JSON")?;
                    writeln!(out, "{}", csv_row(&value))?;
                }
            }
            lines += 1;
        }
        spinner.set_message(format!("simulating: {lines} messages"));
    }
    anyhow::ensure!(
        pending.iter().all(u8::is_ascii_whitespace),
        "the simulation ended in the middle of a line"
    );
    out.flush()?;
    spinner.finish_and_clear();
    Ok(lines)
}

/// A date alone means midnight UTC; anything else goes as it is.
fn instant(text: &str) -> String {
    if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    }
}

/// One CSV record (RFC 4180): a field with a comma, quote or line break is
/// quoted, its quotes doubled.
fn csv_row(line: &Value) -> String {
    COLUMNS
        .iter()
        .map(|column| {
            let field = match &line[column] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if field.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn diff(
    name: &str,
    file: &Path,
    config: &[(String, String)],
    limit: u32,
    url: &str,
    token: Option<&str>,
) -> ExitCode {
    match run_diff(name, file, config, limit, url, token).await {
        Ok(preview) => {
            print!("{}", diff_table(&preview));
            if preview["failed"].as_u64().unwrap_or(0) > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("kairos plugin diff: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_diff(
    name: &str,
    file: &Path,
    config: &[(String, String)],
    limit: u32,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let mut endpoint =
        reqwest::Url::parse(&format!("{}/event-types/{name}", url.trim_end_matches('/')))
            .context("--url")?;
    {
        let mut query = endpoint.query_pairs_mut();
        query.append_pair("dry_run", "true");
        query.append_pair("limit", &limit.to_string());
        for (key, value) in config {
            query.append_pair(&format!("config.{key}"), value);
        }
    }
    let mut request = reqwest::Client::new()
        .put(endpoint.clone())
        .header("content-type", "application/wasm")
        .header("accept", "application/x-ndjson")
        .body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let bar = spinner("compiling and checking the candidate");
    let response = request
        .send()
        .await
        .with_context(|| format!("sending to {endpoint}"));
    let response = match response {
        Ok(response) => success(response).await,
        Err(error) => Err(error),
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            bar.finish_and_clear();
            return Err(error);
        }
    };
    let mut pending = Vec::new();
    let mut body = response.bytes_stream();
    let mut outcome = None;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the dry run stopped part-way")?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: Value = serde_json::from_slice(&line).context("a line that is not JSON")?;
            if let Some(progress) = line.get("progress") {
                let total = progress["users_total"].as_u64().unwrap_or(0);
                if bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:40}] {pos}/{len} users, eta {eta}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_message(format!("comparing {name}"));
                }
                bar.set_position(progress["users_read"].as_u64().unwrap_or(0));
            } else if let Some(preview) = line.get("preview") {
                outcome = Some(Ok(preview.clone()));
            } else if let Some(error) = line.get("error") {
                outcome = Some(Err(anyhow::anyhow!(
                    "{}",
                    error.as_str().unwrap_or("the dry run failed")
                )));
            }
        }
    }
    bar.finish_and_clear();
    outcome.unwrap_or_else(|| {
        Err(anyhow::anyhow!(
            "the host ended the dry run without a result"
        ))
    })
}

/// A spinner on standard error when it is a terminal; hidden otherwise.
fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// The response if it succeeded, else its error (`field: error`) as the host said it.
pub(crate) async fn success(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|body| {
            let error = body["error"].as_str()?.to_string();
            Some(match body["field"].as_str() {
                Some(field) => format!("{field}: {error}"),
                None => error,
            })
        })
        .unwrap_or(text);
    anyhow::bail!("{} answered {status}: {detail}", url.path())
}

/// The preview as a summary and a table: one row per listed user.
pub fn diff_table(preview: &Value) -> String {
    let version = |v: &Value| v.as_str().unwrap_or("(not loaded)").to_string();
    let mut out = format!(
        "{}: live {} -> candidate {}\n{} users with its dates: {} changed, {} failed, {} unchanged\n",
        preview["event_type"].as_str().unwrap_or("?"),
        version(&preview["live_version"]),
        version(&preview["candidate_version"]),
        preview["users"],
        preview["changed"],
        preview["failed"],
        preview["users"].as_u64().unwrap_or(0)
            - preview["changed"].as_u64().unwrap_or(0)
            - preview["failed"].as_u64().unwrap_or(0),
    );
    let changes = preview["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        return out;
    }
    let planned = |p: &Value| {
        if p.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} ({})",
                p["occurrence"].as_str().unwrap_or("?"),
                p["due_at"].as_str().unwrap_or("?")
            )
        }
    };
    let mut rows = vec![[
        "STATUS".to_string(),
        "USER".to_string(),
        "BEFORE: LOCAL (UTC)".to_string(),
        "AFTER: LOCAL (UTC)".to_string(),
        "MESSAGE OR ERROR".to_string(),
    ]];
    for change in &changes {
        let (before, after) = (&change["before"], &change["after"]);
        let (status, note) = if let Some(error) = change["error"].as_str() {
            ("failed", error.to_string())
        } else if before == after {
            ("same", after["text"].as_str().unwrap_or("").to_string())
        } else {
            let (old, new) = (
                before["text"].as_str().unwrap_or(""),
                after["text"].as_str().unwrap_or(""),
            );
            let note = if old == new || before.is_null() || after.is_null() {
                format!("{old}{new}")
            } else {
                format!("{new} (was: {old})")
            };
            ("changed", note)
        };
        rows.push([
            status.to_string(),
            change["user_id"].as_str().unwrap_or("?").to_string(),
            planned(before),
            planned(after),
            note,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            line.push_str(&format!("{:<width$}  ", row[i]));
        }
        line.push_str(&row[4]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let listed = changes.len() as u64;
    let total = preview["users"].as_u64().unwrap_or(0);
    if listed < total {
        out.push_str(&format!(
            "({listed} of {total} users listed; --limit lists up to 1000)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_csv_field_with_a_comma_quote_or_newline_is_quoted() {
        let line = json!({
            "user_id": "u", "event_type": "birthday", "event_type_version": "0.1.0",
            "occurrence": "2027-01-01T09:00:00", "timezone": "UTC",
            "due_at": "2027-01-01T09:00:00Z", "text": "Hey, \"Ada\"\nhi",
        });
        assert_eq!(
            csv_row(&line),
            "u,birthday,0.1.0,2027-01-01T09:00:00,UTC,2027-01-01T09:00:00Z,\"Hey, \"\"Ada\"\"\nhi\""
        );
    }

    #[test]
    fn a_date_alone_is_midnight_utc() {
        assert_eq!(instant("2027-03-28"), "2027-03-28T00:00:00Z");
        assert_eq!(
            instant("2027-03-28T01:00:00+02:00"),
            "2027-03-28T01:00:00+02:00"
        );
    }

    #[test]
    fn the_table_names_each_status_and_the_counts() {
        let before = json!({"occurrence": "2027-06-10T09:00:00", "due_at": "2027-06-10T09:00:00Z", "text": "Hi"});
        let after = json!({"occurrence": "2027-06-10T10:30:00", "due_at": "2027-06-10T10:30:00Z", "text": "Hi"});
        let table = diff_table(&json!({
            "event_type": "birthday", "live_version": "0.1.0", "candidate_version": "0.2.0",
            "users": 3, "changed": 1, "failed": 1,
            "changes": [
                {"user_id": "a", "before": before, "after": null, "error": "trap: boom"},
                {"user_id": "b", "before": before, "after": after, "error": null},
            ],
        }));
        assert!(table.starts_with("birthday: live 0.1.0 -> candidate 0.2.0\n3 users with its dates: 1 changed, 1 failed, 1 unchanged\n"), "{table}");
        let rows: Vec<&str> = table.lines().skip(3).collect();
        assert!(
            rows[0].starts_with("failed ") && rows[0].ends_with("trap: boom"),
            "{table}"
        );
        assert!(
            rows[1].starts_with("changed")
                && rows[1].contains("2027-06-10T10:30:00 (2027-06-10T10:30:00Z)"),
            "{table}"
        );
        assert!(
            table.ends_with("(2 of 3 users listed; --limit lists up to 1000)\n"),
            "{table}"
        );
    }
}
