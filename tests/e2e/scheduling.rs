//! Generation with the real birthday component: due times across timezones,
//! DST gaps and overlaps, Feb 29, and the operator's config.

use crate::helpers::{ada, plugin_dir_with_birthday, plugin_wasm, spawn_app_with};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc, Weekday};
use kairos::plugin::{
    LoadedPlugin, PluginConfig, PluginLimits, PluginRuntime, PluginSource, Subject,
};
use kairos::scheduler::plan_next;
use serde_json::json;
use std::collections::BTreeMap;

fn birthday(config: &[(&str, &str)]) -> LoadedPlugin {
    let runtime = PluginRuntime::new(PluginLimits::default()).unwrap();
    let bytes = std::fs::read(plugin_wasm("kairos-birthday")).unwrap();
    let config: PluginConfig = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LoadedPlugin::load(
        &runtime,
        &bytes,
        config,
        None,
        PluginSource::File("birthday.wasm".into()),
    )
    .unwrap()
}

fn subject(timezone: &str, born: &str) -> Subject {
    Subject {
        id: uuid::Uuid::new_v4(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        timezone: timezone.into(),
        dates: BTreeMap::from([("birthday".to_string(), born.parse().unwrap())]),
        attributes: BTreeMap::new(),
    }
}

fn local(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").unwrap()
}

fn utc(text: &str) -> DateTime<Utc> {
    local(text).and_utc()
}

/// (occurrence, due_at) for a subject, after a fixed local time.
fn plan(
    plugin: &LoadedPlugin,
    timezone: &str,
    born: &str,
    after: &str,
) -> (NaiveDateTime, DateTime<Utc>) {
    let planned = plan_next(plugin, &subject(timezone, born), local(after))
        .unwrap()
        .unwrap();
    assert_eq!(planned.event_type, "birthday");
    assert_eq!(planned.timezone, timezone);
    (planned.occurrence, planned.due_at)
}

#[test]
fn the_component_describes_itself() {
    let plugin = birthday(&[]);
    assert_eq!(plugin.info.name, "birthday");
    assert_eq!(plugin.info.dates, ["birthday"]);
    assert!(!plugin.info.version.is_empty());
    assert_eq!(plugin.sha256.len(), 64);
}

#[test]
fn due_times_across_offsets_of_every_kind() {
    let plugin = birthday(&[]);
    let cases = [
        ("UTC", "2026-12-10T09:00"),
        ("Asia/Tokyo", "2026-12-10T00:00"),          // +09:00
        ("America/Los_Angeles", "2026-12-10T17:00"), // -08:00
        ("Asia/Kolkata", "2026-12-10T03:30"),        // +05:30
        ("Asia/Kathmandu", "2026-12-10T03:15"),      // +05:45
        ("Australia/Eucla", "2026-12-10T00:15"),     // +08:45
        ("America/St_Johns", "2026-12-10T12:30"),    // -03:30
        ("Pacific/Kiritimati", "2026-12-09T19:00"),  // +14:00
        ("Pacific/Pago_Pago", "2026-12-10T20:00"),   // -11:00
        ("Australia/Sydney", "2026-12-09T22:00"),    // +11:00, southern summer time
        ("America/Santiago", "2026-12-10T12:00"),    // -03:00, southern summer time
    ];
    for (zone, due) in cases {
        let (occurrence, due_at) = plan(&plugin, zone, "1990-12-10", "2026-11-22T12:00");
        assert_eq!(occurrence, local("2026-12-10T09:00"), "{zone}");
        assert_eq!(due_at, utc(due), "{zone}");
    }
}

#[test]
fn southern_winter_and_northern_summer_use_their_own_offsets() {
    let plugin = birthday(&[]);
    // June: Sydney is on standard time (+10), London on summer time (+1).
    assert_eq!(
        plan(
            &plugin,
            "Australia/Sydney",
            "1990-06-15",
            "2027-01-01T00:00"
        )
        .1,
        utc("2027-06-14T23:00")
    );
    assert_eq!(
        plan(&plugin, "Europe/London", "1990-06-15", "2027-01-01T00:00").1,
        utc("2027-06-15T08:00")
    );
}

#[test]
fn a_send_time_in_a_dst_gap_keeps_its_wall_time_and_moves_its_instant_forward() {
    let plugin = birthday(&[("send_at", "02:30")]);
    // New York springs forward at 02:00 on 2027-03-14.
    let (occurrence, due_at) = plan(
        &plugin,
        "America/New_York",
        "1990-03-14",
        "2027-01-01T00:00",
    );
    assert_eq!(occurrence, local("2027-03-14T02:30"));
    assert_eq!(due_at, utc("2027-03-14T07:30"), "03:30 EDT");
    // Sydney springs forward at 02:00 on 2026-10-04.
    let (occurrence, due_at) = plan(
        &plugin,
        "Australia/Sydney",
        "1990-10-04",
        "2026-01-01T00:00",
    );
    assert_eq!(occurrence, local("2026-10-04T02:30"));
    assert_eq!(due_at, utc("2026-10-03T16:30"), "03:30 AEDT");
}

#[test]
fn a_send_time_in_a_dst_overlap_takes_the_earlier_instant() {
    let plugin = birthday(&[("send_at", "01:30")]);
    // New York falls back at 02:00 on 2026-11-01; 01:30 happens twice.
    let (_, due_at) = plan(
        &plugin,
        "America/New_York",
        "1990-11-01",
        "2026-01-01T00:00",
    );
    assert_eq!(due_at, utc("2026-11-01T05:30"), "01:30 EDT, not EST");
    let plugin = birthday(&[("send_at", "02:30")]);
    // Sydney falls back at 03:00 on 2027-04-04; 02:30 happens twice.
    let (_, due_at) = plan(
        &plugin,
        "Australia/Sydney",
        "1990-04-04",
        "2027-01-01T00:00",
    );
    assert_eq!(due_at, utc("2027-04-03T15:30"), "02:30 AEDT, not AEST");
}

#[test]
fn feb_29_follows_the_leap_day_setting() {
    let feb28 = birthday(&[]);
    let mar1 = birthday(&[("leap_day", "mar1")]);
    assert_eq!(
        plan(&feb28, "UTC", "2000-02-29", "2026-11-22T00:00").0,
        local("2027-02-28T09:00")
    );
    assert_eq!(
        plan(&mar1, "UTC", "2000-02-29", "2026-11-22T00:00").0,
        local("2027-03-01T09:00")
    );
    assert_eq!(
        plan(&feb28, "UTC", "2000-02-29", "2027-11-22T00:00").0,
        local("2028-02-29T09:00")
    );
}

#[test]
fn send_at_moves_the_local_time() {
    let plugin = birthday(&[("send_at", "17:45")]);
    assert_eq!(
        plan(&plugin, "Asia/Kolkata", "1990-12-10", "2026-11-22T00:00"),
        (local("2026-12-10T17:45"), utc("2026-12-10T12:15"))
    );
}

#[test]
fn a_subject_without_the_date_gets_no_event_and_bad_config_is_a_plugin_error() {
    let plugin = birthday(&[]);
    let mut nobody = subject("UTC", "1990-01-01");
    nobody.dates.clear();
    assert_eq!(
        plan_next(&plugin, &nobody, local("2026-01-01T00:00")).unwrap(),
        None
    );

    let broken = birthday(&[("send_at", "25:00")]);
    let error = plan_next(
        &broken,
        &subject("UTC", "1990-01-01"),
        local("2026-01-01T00:00"),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("plugin error: ") && text.contains("send_at"),
        "{text}"
    );
}

/// The second Sunday of March: when New York springs forward.
fn us_spring_forward(year: i32) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, 3, Weekday::Sun, 2).unwrap()
}

#[tokio::test]
async fn through_the_api_a_gap_time_is_stored_as_the_wall_time_with_the_forward_instant() {
    let app = spawn_app_with(|s| {
        s.plugin_dir = plugin_dir_with_birthday(Some("[config]\nsend_at = \"02:30\"\n"))
    })
    .await;
    let today = Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive();
    let mut gap_day = us_spring_forward(today.year());
    if gap_day <= today {
        gap_day = us_spring_forward(today.year() + 1);
    }
    let mut body = ada();
    body["timezone"] = json!("America/New_York");
    body["dates"] = json!({"birthday": format!("1990-03-{:02}", gap_day.day())});
    let user = app.create_user(&body).await;
    let events = app.events_of(user["id"].as_str().unwrap()).await;
    let this_year = NaiveDate::from_ymd_opt(today.year(), 3, gap_day.day()).unwrap();
    let next_birthday = if this_year > today {
        this_year
    } else {
        this_year.with_year(today.year() + 1).unwrap()
    };
    assert_eq!(events[0]["occurrence"], format!("{next_birthday}T02:30:00"));
    // In the few days a year when this year's date has passed but next year's
    // gap is later, the next birthday is not on a gap day.
    if next_birthday == gap_day {
        let due: DateTime<Utc> = events[0]["due_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            due,
            (gap_day.and_hms_opt(7, 30, 0).unwrap()).and_utc(),
            "02:30 EST would be 07:30Z; the gap moves it to 03:30 EDT = 07:30Z"
        );
    }
}
