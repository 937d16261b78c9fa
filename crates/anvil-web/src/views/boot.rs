//! A machine's boot timeline: the steps of its latest network boot as a
//! vertical timeline, and every recorded boot event in a collapsible table.
//! The card reloads itself (htmx polling its fragment) while the boot is
//! incomplete or a power job was just started.

use super::{fmt_ago, fmt_bytes, fmt_clock, fmt_duration, fmt_time};
use crate::auth::Session;
use crate::error::PageError;
use anvil_api_types::{BootEvent, BootTimeline};
use anvil_core::App;
use anvil_types::Job;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;

/// How often the card reloads while it polls (the template's `every`).
pub(crate) const POLL_SECONDS: u32 = 3;

/// The raw events shown in the table (the newest; core keeps up to 500).
const EVENTS_SHOWN: usize = 200;

/// A job this recent keeps the timeline polling even after a complete boot:
/// a power cycle or PXE boot starts a new boot a few seconds later.
const RECENT_JOB_MINUTES: i64 = 10;

/// How an expected step is named and explained.
fn step_text(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "dhcp.discover" => ("DHCP DISCOVER", "The firmware asks for an address"),
        "dhcp.offer" => ("DHCP OFFER", "Anvil offers an address"),
        "dhcp.request" => ("DHCP REQUEST", "The client takes the offer"),
        "dhcp.ack" => ("DHCP ACK", "Anvil confirms the lease"),
        "tftp.transfer" => ("TFTP", "The firmware loads iPXE over TFTP"),
        "http.script" => ("iPXE script", "iPXE fetches its boot script"),
        "http.kernel" => ("Kernel", "iPXE downloads the kernel"),
        "http.initrd" => ("Initrd", "iPXE downloads the initial ramdisk"),
        "callhome" => ("Call-home", "The booted environment reports in"),
        _ => ("Step", ""),
    }
}

/// A step's name for the status line ("Stopped after DHCP ACK").
pub(crate) fn step_label(kind: &str) -> String {
    match step_text(kind) {
        ("Step", _) => kind.to_string(),
        (label, _) => label.to_string(),
    }
}

pub(crate) struct StepView {
    pub(crate) label: &'static str,
    /// `done`, `stopped` (the last step reached by an incomplete boot),
    /// `skipped` (not seen, but a later step was) or `pending`.
    pub(crate) status: &'static str,
    /// What happened (from the event), or what the step is when it has not.
    pub(crate) text: String,
    pub(crate) time: String,
    pub(crate) time_full: String,
    /// Time since the boot's first step, e.g. "+1.2 s".
    pub(crate) offset: String,
}

pub(crate) struct DetailItem {
    pub(crate) key: String,
    pub(crate) value: String,
}

pub(crate) struct EventRow {
    pub(crate) time: String,
    pub(crate) time_full: String,
    pub(crate) mac: String,
    pub(crate) kind: String,
    /// Whether the event is one of the boot steps (shown stronger).
    pub(crate) step: bool,
    pub(crate) details: Vec<DetailItem>,
}

pub(crate) struct TimelineView {
    pub(crate) machine_id: String,
    /// `complete`, `stopped` or `none` (nothing recorded): the status colour.
    pub(crate) outcome: &'static str,
    pub(crate) headline: String,
    pub(crate) summary: String,
    /// Facts of the latest boot: interface, address, start, duration.
    pub(crate) facts: Vec<DetailItem>,
    pub(crate) steps: Vec<StepView>,
    pub(crate) events: Vec<EventRow>,
    pub(crate) events_total: usize,
    pub(crate) events_hidden: usize,
    /// Whether the card reloads itself.
    pub(crate) polling: bool,
    pub(crate) poll_seconds: u32,
}

/// A detail value for display; `None` for what is not worth a cell.
fn detail_value(key: &str, v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_string()),
        Value::Number(n) => match (key, n.as_u64()) {
            ("bytes", Some(b)) => Some(fmt_bytes(b)),
            ("ms", Some(ms)) => Some(format!("{ms} ms")),
            ("uptime_secs", _) => n.as_f64().map(|s| format!("{s:.1} s")),
            _ => Some(n.to_string()),
        },
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        other => Some(other.to_string()),
    }
}

fn details(detail: &Value) -> Vec<DetailItem> {
    match detail {
        Value::Object(o) => o
            .iter()
            .filter_map(|(k, v)| {
                detail_value(k, v).map(|value| DetailItem {
                    key: k.replace('_', " "),
                    value,
                })
            })
            .collect(),
        Value::Null => Vec::new(),
        other => vec![DetailItem {
            key: "detail".into(),
            value: other.to_string(),
        }],
    }
}

/// The one-line summary of what a step's event tells: the address for
/// DHCP, the file and size for downloads.
fn step_summary(e: &BootEvent) -> String {
    let get = |k: &str| e.detail.get(k).and_then(|v| detail_value(k, v));
    let mut parts: Vec<String> = Vec::new();
    match e.kind.as_str() {
        "dhcp.discover" | "dhcp.request" => {
            parts.push(format!("from {}", e.mac));
        }
        "dhcp.offer" | "dhcp.ack" => {
            if let Some(ip) = get("ip") {
                parts.push(ip);
            }
            if let Some(n) = get("network") {
                parts.push(format!("network {n}"));
            }
        }
        "tftp.transfer" => {
            parts.extend(get("file"));
            parts.extend(get("bytes"));
            if let Some(ms) = get("ms") {
                parts.push(format!("in {ms}"));
            }
            if e.detail.get("ok") == Some(&Value::Bool(false)) {
                parts.push(get("outcome").unwrap_or_else(|| "failed".into()));
            }
        }
        "http.script" => {
            if let Some(stage) = get("stage") {
                parts.push(format!("{stage} script"));
            }
        }
        "http.kernel" | "http.initrd" => {
            parts.extend(get("path"));
            parts.extend(get("bytes"));
            if let Some(status) = e.detail.get("status").and_then(Value::as_u64)
                && status != 200
            {
                parts.push(format!("HTTP {status}"));
            }
        }
        "callhome" => {
            if let Some(ip) = get("ip") {
                parts.push(format!("from {ip}"));
            }
            if let Some(up) = get("uptime_secs") {
                parts.push(format!("up {up}"));
            }
        }
        _ => {}
    }
    parts.join(" · ")
}

/// The card's view of a timeline. `jobs` are the machine's recent jobs:
/// a fresh one keeps the card polling for the boot it is about to cause.
pub(crate) fn timeline_view(t: &BootTimeline, jobs: &[Job], now: OffsetDateTime) -> TimelineView {
    // The latest boot: from its last DHCP DISCOVER, as core counts it.
    let start = t
        .events
        .iter()
        .rposition(|e| e.kind == "dhcp.discover")
        .unwrap_or(0);
    let latest = &t.events[start.min(t.events.len())..];
    let first_time = t.steps.iter().find_map(|s| s.time);
    let last_reached = t.steps.iter().rposition(|s| s.time.is_some());

    let steps = t
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (label, about) = step_text(&s.kind);
            let event = latest.iter().find(|e| e.kind == s.kind);
            match s.time {
                Some(at) => {
                    let stopped = t.stopped_after.as_deref() == Some(s.kind.as_str());
                    let summary = event.map(step_summary).unwrap_or_default();
                    StepView {
                        label,
                        status: if stopped { "stopped" } else { "done" },
                        text: if summary.is_empty() {
                            about.to_string()
                        } else {
                            summary
                        },
                        time: fmt_clock(at),
                        time_full: fmt_time(at),
                        // Steps within the same millisecond need no offset.
                        offset: match first_time {
                            Some(f) if (at - f).whole_milliseconds() >= 1 => {
                                format!("+{}", fmt_duration(at - f))
                            }
                            _ => String::new(),
                        },
                    }
                }
                None => {
                    let skipped = last_reached.is_some_and(|last| i < last);
                    StepView {
                        label,
                        status: if skipped { "skipped" } else { "pending" },
                        text: if skipped && s.kind == "tftp.transfer" {
                            "Skipped: the firmware started iPXE without TFTP".to_string()
                        } else if skipped {
                            "Not seen in this boot".to_string()
                        } else {
                            about.to_string()
                        },
                        time: String::new(),
                        time_full: String::new(),
                        offset: String::new(),
                    }
                }
            }
        })
        .collect();

    let last_event = t.events.last().map(|e| e.time);
    let recent_job = jobs
        .iter()
        .any(|j| now - j.created_at < time::Duration::minutes(RECENT_JOB_MINUTES));
    let (outcome, headline, summary) = if t.complete {
        let end = t.steps.iter().rev().find_map(|s| s.time).unwrap_or(now);
        let took = first_time.map(|f| fmt_duration(end - f));
        (
            "complete",
            "Boot complete".to_string(),
            match took {
                Some(took) => format!(
                    "The latest boot reached call-home in {took}, {}.",
                    fmt_ago(end, now)
                ),
                None => "The latest boot reached call-home.".to_string(),
            },
        )
    } else if let Some(k) = &t.stopped_after {
        let next = t
            .steps
            .iter()
            .skip_while(|s| &s.kind != k)
            .nth(1)
            .map(|s| step_label(&s.kind));
        let ago = last_event.map(|at| fmt_ago(at, now)).unwrap_or_default();
        (
            "stopped",
            format!("Stopped after {}", step_label(k)),
            match next {
                Some(next) => format!("Last activity {ago}. Waiting for {next}."),
                None => format!("Last activity {ago}."),
            },
        )
    } else if t.macs.is_empty() {
        (
            "none",
            "No network boot recorded yet".to_string(),
            "This machine has no network interface, so Anvil cannot tell its boots \
             from others'. Add its MAC address on the Edit page."
                .to_string(),
        )
    } else if t.events.is_empty() {
        (
            "none",
            "No network boot recorded yet".to_string(),
            "Steps appear here as the machine talks to Anvil's DHCP, TFTP and HTTP \
             services. Power it on or PXE-boot it to start one."
                .to_string(),
        )
    } else {
        (
            "stopped",
            "No boot step reached".to_string(),
            "Anvil saw traffic from this machine, but none of the boot steps. \
             See the events below."
                .to_string(),
        )
    };

    let mut facts = Vec::new();
    if let Some(e) = latest.first() {
        facts.push(DetailItem {
            key: "Interface".into(),
            value: e.mac.clone(),
        });
    }
    if let Some(ip) = latest
        .iter()
        .rev()
        .filter(|e| e.kind == "dhcp.ack" || e.kind == "dhcp.offer")
        .find_map(|e| e.detail.get("ip").and_then(|v| detail_value("ip", v)))
    {
        facts.push(DetailItem {
            key: "Address".into(),
            value: ip,
        });
    }
    if let Some(f) = first_time {
        facts.push(DetailItem {
            key: "Started".into(),
            value: fmt_time(f),
        });
    }

    let events_total = t.events.len();
    let shown = &t.events[events_total.saturating_sub(EVENTS_SHOWN)..];
    let events = shown
        .iter()
        .map(|e| EventRow {
            time: fmt_clock(e.time),
            time_full: fmt_time(e.time),
            mac: e.mac.clone(),
            kind: e.kind.clone(),
            step: anvil_core::boot::BOOT_STEPS.contains(&e.kind.as_str()),
            details: details(&e.detail),
        })
        .collect();

    TimelineView {
        machine_id: t.machine_id.to_string(),
        outcome,
        headline,
        summary,
        facts,
        steps,
        events,
        events_total,
        events_hidden: events_total - shown.len(),
        polling: !t.complete || recent_job,
        poll_seconds: POLL_SECONDS,
    }
}

/// The timeline card alone, for htmx polling.
#[derive(Template, WebTemplate)]
#[template(path = "partials/boot_timeline.html")]
struct TimelinePartial {
    timeline: TimelineView,
}

/// `GET /machines/{id}/boot-timeline`: the card, for the page to swap in.
pub(crate) async fn fragment(
    _session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let t = app.boot_timeline(&id).await?;
    let jobs = app.list_jobs(Some(&t.machine_id.to_string()), 5).await?;
    let timeline = timeline_view(&t, &jobs, OffsetDateTime::now_utc());
    Ok(TimelinePartial { timeline }.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::BootStep;
    use serde_json::json;
    use time::macros::datetime;
    use uuid::Uuid;

    fn event(kind: &str, secs: i64, detail: Value) -> BootEvent {
        BootEvent {
            id: secs,
            time: datetime!(2025-03-01 10:00:00 UTC) + time::Duration::seconds(secs),
            mac: "52:54:00:00:00:01".into(),
            kind: kind.into(),
            detail,
        }
    }

    fn timeline(
        events: Vec<BootEvent>,
        stopped_after: Option<&str>,
        complete: bool,
    ) -> BootTimeline {
        let steps = anvil_core::boot::BOOT_STEPS
            .iter()
            .map(|k| BootStep {
                kind: k.to_string(),
                time: events.iter().find(|e| e.kind == *k).map(|e| e.time),
            })
            .collect();
        BootTimeline {
            machine_id: Uuid::nil(),
            macs: vec!["52:54:00:00:00:01".into()],
            events,
            steps,
            stopped_after: stopped_after.map(str::to_string),
            complete,
        }
    }

    #[test]
    fn a_stalled_boot_says_where_it_stopped_and_keeps_polling() {
        let t = timeline(
            vec![
                event("dhcp.discover", 0, json!({"ip": null})),
                event(
                    "dhcp.offer",
                    1,
                    json!({"ip": "10.0.0.23", "network": "lab"}),
                ),
                event("dhcp.request", 2, json!({})),
                event("dhcp.ack", 3, json!({"ip": "10.0.0.23"})),
            ],
            Some("dhcp.ack"),
            false,
        );
        let now = datetime!(2025-03-01 10:05:00 UTC);
        let v = timeline_view(&t, &[], now);
        assert_eq!(v.outcome, "stopped");
        assert_eq!(v.headline, "Stopped after DHCP ACK");
        assert!(v.summary.contains("Waiting for TFTP"), "{}", v.summary);
        assert!(v.polling);
        let status: Vec<_> = v.steps.iter().map(|s| s.status).collect();
        assert_eq!(&status[..5], ["done", "done", "done", "stopped", "pending"]);
        assert_eq!(v.steps[1].text, "10.0.0.23 · network lab");
        assert_eq!(v.steps[3].offset, "+3.0 s");
        assert!(v.facts.iter().any(|f| f.value == "10.0.0.23"));
    }

    #[test]
    fn a_complete_boot_stops_polling_and_marks_skipped_steps() {
        let t = timeline(
            vec![
                event("dhcp.discover", 0, json!({})),
                event("dhcp.offer", 1, json!({"ip": "10.0.0.23"})),
                event("dhcp.request", 1, json!({})),
                event("dhcp.ack", 1, json!({"ip": "10.0.0.23"})),
                event("http.script", 3, json!({"stage": "discovery"})),
                event(
                    "http.kernel",
                    5,
                    json!({"path": "/boot/vmlinuz", "bytes": 11_534_336, "status": 200}),
                ),
                event(
                    "http.initrd",
                    9,
                    json!({"path": "/boot/initrd", "bytes": 52_428_800, "status": 200}),
                ),
                event(
                    "callhome",
                    40,
                    json!({"ip": "10.0.0.23", "uptime_secs": 21.5}),
                ),
            ],
            None,
            true,
        );
        let v = timeline_view(&t, &[], datetime!(2025-03-01 11:00:00 UTC));
        assert_eq!(v.outcome, "complete");
        assert!(!v.polling);
        assert!(v.summary.contains("in 40.0 s"), "{}", v.summary);
        let tftp = &v.steps[4];
        assert_eq!(tftp.status, "skipped");
        assert!(tftp.text.contains("without TFTP"));
        assert_eq!(v.steps[6].text, "/boot/vmlinuz · 11.0 MiB");
        assert_eq!(v.steps[8].text, "from 10.0.0.23 · up 21.5 s");
        let kernel = v.events.iter().find(|e| e.kind == "http.kernel").unwrap();
        assert!(
            kernel
                .details
                .iter()
                .any(|d| d.key == "bytes" && d.value == "11.0 MiB")
        );
    }

    #[test]
    fn nothing_recorded_is_said_plainly() {
        let mut t = timeline(Vec::new(), None, false);
        let v = timeline_view(&t, &[], OffsetDateTime::now_utc());
        assert_eq!(v.outcome, "none");
        assert!(v.headline.contains("No network boot"));
        assert!(v.summary.contains("Power it on"), "{}", v.summary);
        assert!(v.steps.iter().all(|s| s.status == "pending"));
        t.macs.clear();
        let v = timeline_view(&t, &[], OffsetDateTime::now_utc());
        assert!(v.summary.contains("no network interface"), "{}", v.summary);
    }
}
