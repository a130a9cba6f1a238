//! `kairos import FILE.ndjson`: streams a file (or standard input) to a
//! running host's `POST /users/import`, with a progress bar of bytes sent on
//! a terminal, and prints the summary and every rejected line the host listed.

use crate::import::ImportReport;
use anyhow::Context;
use axum::body::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from the file per chunk sent.
const CHUNK: usize = 256 * 1024;

/// Exit codes: every line imported; some lines rejected; the import failed.
pub const EXIT_REJECTED: u8 = 1;
pub const EXIT_FAILED: u8 = 2;

/// Runs the import and prints its outcome; the exit code says which.
pub async fn run(file: &Path, url: &str, token: Option<&str>) -> ExitCode {
    match send(file, url, token).await {
        Ok(report) => {
            print!("{}", summary(&report));
            if report.rejected_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REJECTED)
            }
        }
        Err(error) => {
            eprintln!("kairos import: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The summary line, then one line per rejected line listed.
pub fn summary(report: &ImportReport) -> String {
    let mut out = format!(
        "imported {} users ({} events planned); rejected {} lines\n",
        report.imported, report.events_planned, report.rejected_count
    );
    for rejected in &report.rejected {
        match &rejected.field {
            Some(field) => out.push_str(&format!(
                "line {}: {field}: {}\n",
                rejected.line, rejected.error
            )),
            None => out.push_str(&format!("line {}: {}\n", rejected.line, rejected.error)),
        }
    }
    let unlisted = report.rejected_count - report.rejected.len() as u64;
    if unlisted > 0 {
        out.push_str(&format!(
            "… and {unlisted} more rejected lines (the host lists the first {})\n",
            report.rejected.len()
        ));
    }
    out
}

async fn send(file: &Path, url: &str, token: Option<&str>) -> anyhow::Result<ImportReport> {
    let (source, size): (Box<dyn AsyncRead + Send + Unpin>, Option<u64>) = if file == Path::new("-")
    {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let opened = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let size = opened.metadata().await.ok().map(|m| m.len());
        (Box::new(opened), size)
    };
    let progress = progress_bar(size, file);
    let body = byte_stream(source, progress.clone(), file.to_path_buf());

    let endpoint = format!("{}/users/import", url.trim_end_matches('/'));
    // No overall timeout: a large import takes as long as it takes.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut request = client
        .post(&endpoint)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("sending to {endpoint}"));
    progress.finish_and_clear();
    let response = response?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {endpoint}"))?;
    if !status.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| {
                let error = body["error"].as_str()?.to_string();
                Some(match body["field"].as_str() {
                    Some(field) => format!("{field}: {error}"),
                    None => error,
                })
            })
            .unwrap_or(text);
        anyhow::bail!("{endpoint} answered {status}: {detail}");
    }
    serde_json::from_str(&text).with_context(|| format!("reading the report of {endpoint}"))
}

/// A bar of bytes sent when standard error is a terminal (a spinner when the
/// size is unknown); hidden otherwise.
fn progress_bar(size: Option<u64>, file: &Path) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("a valid template"),
        ),
    };
    bar.set_message(format!("importing {}", file.display()));
    bar
}

/// The source as a stream of chunks, counting them on the bar.
fn byte_stream(
    source: Box<dyn AsyncRead + Send + Unpin>,
    progress: ProgressBar,
    file: PathBuf,
) -> impl futures::Stream<Item = anyhow::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(source, move |mut source| {
        let (progress, file) = (progress.clone(), file.clone());
        async move {
            let mut buffer = vec![0u8; CHUNK];
            let n = source
                .read(&mut buffer)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            if n == 0 {
                return Ok(None);
            }
            buffer.truncate(n);
            progress.inc(n as u64);
            Ok(Some((Bytes::from(buffer), source)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Rejected;

    #[test]
    fn the_summary_names_each_listed_line_and_counts_the_rest() {
        let report = ImportReport {
            imported: 2,
            events_planned: 2,
            rejected: vec![
                Rejected {
                    line: 3,
                    field: Some("timezone".into()),
                    error: "unknown timezone".into(),
                },
                Rejected {
                    line: 5,
                    field: None,
                    error: "malformed JSON".into(),
                },
            ],
            rejected_count: 7,
        };
        assert_eq!(
            summary(&report),
            "imported 2 users (2 events planned); rejected 7 lines\n\
             line 3: timezone: unknown timezone\n\
             line 5: malformed JSON\n\
             … and 5 more rejected lines (the host lists the first 2)\n"
        );
    }
}
