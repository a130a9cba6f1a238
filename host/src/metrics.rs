//! Metrics through the `metrics` facade, in the Prometheus text format at
//! `/metrics` (`metrics-exporter-prometheus`). What happens in the process —
//! attempts, outcomes, plugin failures, and the histograms of due→delivered
//! lag, webhook time, plugin call time and claim batch size — goes to the
//! process's recorder as it happens. What a scrape reads from this host's
//! state — its event types and their health, the queue — is recorded at the
//! scrape into a recorder of its own, so two hosts in one process (tests)
//! never show each other's.

use crate::event_types::EventTypes;
use crate::plugin::LoadedPlugin;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Seconds: from a millisecond to an hour.
const SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Events per claim statement.
const BATCH: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
/// How often histogram samples are folded in when nobody scrapes, so they
/// never pile up.
const UPKEEP: Duration = Duration::from_secs(5);

static PROCESS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder: installed on first use (the host calls this at
/// start). If something else installed a global recorder first, the
/// process-wide metrics go there and `/metrics` shows only the scrape's.
pub fn install() -> &'static PrometheusHandle {
    PROCESS.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before kairos's own");
        }
        describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .expect("start the metrics upkeep thread");
        handle
    })
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("kairos_claim_batch_size".into()), BATCH)
        })
        .expect("bucket lists are not empty")
}

fn describe() {
    describe_counter!(
        "kairos_delivery_attempts_total",
        "Webhook delivery attempts made."
    );
    describe_counter!("kairos_events_delivered_total", "Events delivered (2xx).");
    describe_counter!(
        "kairos_delivery_retries_total",
        "Failed attempts scheduled for a retry."
    );
    describe_counter!("kairos_events_failed_total", "Events given up on.");
    describe_counter!(
        "kairos_endpoint_state_changes_total",
        "Endpoints disabled or enabled (label to), by this replica."
    );
    describe_counter!(
        "kairos_plugin_failures_total",
        "Plugin calls that trapped, hit a limit or returned an error."
    );
    describe_histogram!(
        "kairos_delivery_lag_seconds",
        Unit::Seconds,
        "From an event's due time to its delivery (2xx)."
    );
    describe_histogram!(
        "kairos_webhook_duration_seconds",
        Unit::Seconds,
        "One webhook request, from sending to the receiver's answer (or the error)."
    );
    describe_histogram!(
        "kairos_plugin_call_seconds",
        Unit::Seconds,
        "One plugin call, in a fresh instance: instantiation and the call."
    );
    describe_histogram!(
        "kairos_claim_batch_size",
        Unit::Count,
        "Events taken by one claim statement (claims that took none are not counted)."
    );
}

pub fn delivery_attempt() {
    counter!("kairos_delivery_attempts_total").increment(1);
}
pub fn delivered(lag: Duration) {
    counter!("kairos_events_delivered_total").increment(1);
    histogram!("kairos_delivery_lag_seconds").record(lag.as_secs_f64());
}
pub fn delivery_retried() {
    counter!("kairos_delivery_retries_total").increment(1);
}
pub fn delivery_failed() {
    counter!("kairos_events_failed_total").increment(1);
}
/// An endpoint was disabled (`true`) or enabled.
pub fn endpoint_changed(endpoint: &str, disabled: bool) {
    counter!("kairos_endpoint_state_changes_total", "endpoint" => endpoint.to_string(),
        "to" => if disabled { "disabled" } else { "active" })
    .increment(1);
}
pub fn webhook_duration(took: Duration) {
    histogram!("kairos_webhook_duration_seconds").record(took.as_secs_f64());
}
pub fn plugin_call(event_type: &str, took: Duration) {
    histogram!("kairos_plugin_call_seconds", "event_type" => event_type.to_string())
        .record(took.as_secs_f64());
}
pub fn claim_batch(events: usize) {
    if events > 0 {
        histogram!("kairos_claim_batch_size").record(events as f64);
    }
}
pub fn plugin_failure(event_type: &str) {
    plugin_failures(event_type, 1);
}
pub fn plugin_failures(event_type: &str, n: u64) {
    if n > 0 {
        counter!("kairos_plugin_failures_total", "event_type" => event_type.to_string())
            .increment(n);
    }
}

/// What a scrape reads from the database.
#[derive(Debug, Default)]
pub struct Queue {
    /// Pending events due now, counted up to `DUE_COUNTED` (a bounded
    /// count on the claimer's index).
    pub due: i64,
    /// The planner's estimate of the rows in the table the claimer scans
    /// (pending and processing events), from the table statistics.
    pub live_estimate: i64,
    /// (user, event type) pairs waiting to be planned again, by type.
    pub unplanned: BTreeMap<String, i64>,
    /// Each endpoint: (id, disabled, events waiting for it).
    pub endpoints: Vec<(String, bool, i64)>,
}

/// The most due events a scrape counts: beyond it the backlog is "at least".
pub const DUE_COUNTED: i64 = 100_000;

/// The process's metrics, then this host's state as gauges.
pub fn render<'a>(
    loaded: impl IntoIterator<Item = &'a LoadedPlugin>,
    fleet: &EventTypes,
    queue: &Queue,
) -> String {
    let process = install().render();
    let scrape = builder().build_recorder();
    metrics::with_local_recorder(&scrape, || {
        describe_gauge!("kairos_event_types_loaded", "Event types loaded.");
        describe_gauge!(
            "kairos_event_type_generation",
            "The generation of the fleet's registry this replica serves for a type."
        );
        describe_gauge!(
            "kairos_event_type_load_failed",
            "1 when this replica could not load the fleet's latest version of a type (it keeps serving the previous one, if any)."
        );
        describe_counter!(
            "kairos_plugin_calls_total",
            "Calls made to the loaded version of a type."
        );
        describe_counter!(
            "kairos_plugin_call_failures_total",
            "Calls to the loaded version of a type that failed."
        );
        describe_gauge!(
            "kairos_plugin_failing",
            "1 when at least 3 of a type's latest 16 calls, and at least half, failed."
        );
        describe_gauge!(
            "kairos_unplanned",
            "(user, event type) pairs waiting to be planned again: the plugin failed, or the type is not loaded where the user changed."
        );
        describe_gauge!(
            "kairos_events_due",
            "Pending events due now (counted up to 100000)."
        );
        describe_gauge!(
            "kairos_events_live_estimate",
            "Pending and processing events, as the table statistics estimate them."
        );
        for plugin in loaded {
            let name = plugin.name().to_string();
            let health = &plugin.health;
            gauge!("kairos_event_types_loaded", "event_type" => name.clone()).set(1.0);
            if let Some(generation) = fleet.generation(&name) {
                gauge!("kairos_event_type_generation", "event_type" => name.clone())
                    .set(generation as f64);
            }
            counter!("kairos_plugin_calls_total", "event_type" => name.clone())
                .absolute(health.calls.load(Ordering::Relaxed));
            counter!("kairos_plugin_call_failures_total", "event_type" => name.clone())
                .absolute(health.failures.load(Ordering::Relaxed));
            gauge!("kairos_plugin_failing", "event_type" => name)
                .set(f64::from(u8::from(health.failing())));
        }
        for event_type in fleet.load_errors().into_keys() {
            gauge!("kairos_event_type_load_failed", "event_type" => event_type).set(1.0);
        }
        for (event_type, count) in &queue.unplanned {
            gauge!("kairos_unplanned", "event_type" => event_type.clone()).set(*count as f64);
        }
        describe_gauge!(
            "kairos_endpoint_disabled",
            "1 while an endpoint is disabled (by the host or by hand): its events wait."
        );
        describe_gauge!(
            "kairos_endpoint_waiting",
            "Pending events held for a disabled endpoint."
        );
        for (endpoint, disabled, waiting) in &queue.endpoints {
            gauge!("kairos_endpoint_disabled", "endpoint" => endpoint.clone()).set(if *disabled {
                1.0
            } else {
                0.0
            });
            gauge!("kairos_endpoint_waiting", "endpoint" => endpoint.clone()).set(*waiting as f64);
        }
        gauge!("kairos_events_due").set(queue.due as f64);
        gauge!("kairos_events_live_estimate").set(queue.live_estimate as f64);
    });
    process + &scrape.handle().render()
}
