//! Process-wide counters, rendered in the Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static DELIVERY_ATTEMPTS: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static RETRIED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static PLUGIN_FAILURES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

pub fn delivery_attempt() {
    DELIVERY_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
}
pub fn delivered() {
    DELIVERED.fetch_add(1, Ordering::Relaxed);
}
pub fn delivery_retried() {
    RETRIED.fetch_add(1, Ordering::Relaxed);
}
pub fn delivery_failed() {
    FAILED.fetch_add(1, Ordering::Relaxed);
}
pub fn plugin_failure(event_type: &str) {
    plugin_failures(event_type, 1);
}
pub fn plugin_failures(event_type: &str, n: u64) {
    if n > 0 {
        *PLUGIN_FAILURES
            .lock()
            .unwrap()
            .entry(event_type.to_string())
            .or_default() += n;
    }
}

/// The counters plus gauges read at scrape time.
pub fn render<'a>(
    loaded: impl IntoIterator<Item = &'a crate::plugin::LoadedPlugin>,
    fleet: &crate::event_types::EventTypes,
    pending_events: i64,
    unplanned: &BTreeMap<String, i64>,
) -> String {
    let loaded: Vec<_> = loaded.into_iter().collect();
    let mut out = String::new();
    let counters = [
        (
            "kairos_delivery_attempts_total",
            "Webhook delivery attempts made.",
            &DELIVERY_ATTEMPTS,
        ),
        (
            "kairos_events_delivered_total",
            "Events delivered (2xx).",
            &DELIVERED,
        ),
        (
            "kairos_delivery_retries_total",
            "Failed attempts scheduled for a retry.",
            &RETRIED,
        ),
        ("kairos_events_failed_total", "Events given up on.", &FAILED),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kairos_plugin_failures_total Plugin calls that trapped, hit a limit or returned an error.\n# TYPE kairos_plugin_failures_total counter"
    );
    for (event_type, count) in PLUGIN_FAILURES.lock().unwrap().iter() {
        let _ = writeln!(
            out,
            "kairos_plugin_failures_total{{event_type=\"{event_type}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kairos_event_types_loaded Event types loaded.\n# TYPE kairos_event_types_loaded gauge"
    );
    for plugin in &loaded {
        let _ = writeln!(
            out,
            "kairos_event_types_loaded{{event_type=\"{}\"}} 1",
            plugin.name()
        );
    }
    let _ = writeln!(
        out,
        "# HELP kairos_event_type_generation The generation of the fleet's registry this replica serves for a type.\n# TYPE kairos_event_type_generation gauge"
    );
    for plugin in &loaded {
        if let Some(generation) = fleet.generation(plugin.name()) {
            let _ = writeln!(
                out,
                "kairos_event_type_generation{{event_type=\"{}\"}} {generation}",
                plugin.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kairos_event_type_load_failed 1 when this replica could not load the fleet's latest version of a type (it keeps serving the previous one, if any).\n# TYPE kairos_event_type_load_failed gauge"
    );
    for event_type in fleet.load_errors().keys() {
        let _ = writeln!(
            out,
            "kairos_event_type_load_failed{{event_type=\"{event_type}\"}} 1"
        );
    }
    type Read = fn(&crate::plugin::PluginHealth) -> u64;
    let per_type: [(&str, &str, &str, Read); 3] = [
        (
            "kairos_plugin_calls_total",
            "counter",
            "Calls made to the loaded version of a type.",
            |h| h.calls.load(Ordering::Relaxed),
        ),
        (
            "kairos_plugin_call_failures_total",
            "counter",
            "Calls to the loaded version of a type that failed.",
            |h| h.failures.load(Ordering::Relaxed),
        ),
        (
            "kairos_plugin_failing",
            "gauge",
            "1 when at least 3 of a type's latest 16 calls, and at least half, failed.",
            |h| u64::from(h.failing()),
        ),
    ];
    for (name, kind, help, read) in per_type {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for plugin in &loaded {
            let _ = writeln!(
                out,
                "{name}{{event_type=\"{}\"}} {}",
                plugin.name(),
                read(&plugin.health)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kairos_unplanned (user, event type) pairs waiting to be planned again: the plugin failed, or the type is not loaded where the user changed.\n# TYPE kairos_unplanned gauge"
    );
    for (event_type, count) in unplanned {
        let _ = writeln!(
            out,
            "kairos_unplanned{{event_type=\"{event_type}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kairos_events_pending Events waiting to be delivered.\n# TYPE kairos_events_pending gauge\nkairos_events_pending {pending_events}"
    );
    out
}
