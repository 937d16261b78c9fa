//! Page handlers, one module per area. Each page is a template struct holding
//! ready-to-print strings, so templates stay free of logic beyond loops and
//! conditionals.

pub(crate) mod boot;
pub(crate) mod deploy;
pub(crate) mod enroll;
pub(crate) mod hardware;
pub(crate) mod images;
pub(crate) mod instances;
pub(crate) mod login;
pub(crate) mod machine_form;
pub(crate) mod machines;
pub(crate) mod netbox;
pub(crate) mod power;

use crate::auth::Session;
use axum::response::Redirect;
use time::OffsetDateTime;
use time::macros::format_description;

/// What the page frame (`base.html`) needs: who is logged in, for the user
/// menu and the logout form's CSRF token.
pub(crate) struct Layout {
    pub(crate) user: Option<NavUser>,
    pub(crate) version: &'static str,
}

pub(crate) struct NavUser {
    pub(crate) username: String,
    pub(crate) csrf_token: String,
}

impl Layout {
    /// The frame of pages shown without a session (login, errors).
    pub(crate) fn anonymous() -> Self {
        Layout {
            user: None,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    pub(crate) fn for_session(s: &Session) -> Self {
        Layout {
            user: Some(NavUser {
                username: s.user.username.clone(),
                csrf_token: s.csrf_token.clone(),
            }),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// `GET /`: the machine list is the home page.
pub(crate) async fn home() -> Redirect {
    Redirect::to(crate::auth::HOME)
}

/// A timestamp as operators read it in a table: UTC, to the second.
pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    ))
    .unwrap_or_else(|_| t.to_string())
}

/// A timestamp where space is short: UTC, to the minute.
pub(crate) fn fmt_minute(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
        .unwrap_or_else(|_| t.to_string())
}

/// A timestamp for `<time datetime>`.
pub(crate) fn fmt_iso(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// An optional text for display: a dash when absent, as in MAAS.
pub(crate) fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("—").to_string()
}

/// A time of day where the date is shown elsewhere: UTC, to the second.
pub(crate) fn fmt_clock(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!("[hour]:[minute]:[second]"))
        .unwrap_or_else(|_| t.to_string())
}

/// A duration as people say it: "850 ms", "4.2 s", "3 min 05 s", "2 h 10 min".
pub(crate) fn fmt_duration(d: time::Duration) -> String {
    let ms = d.whole_milliseconds().max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3600 {
        return format!("{} min {:02} s", s / 60, s % 60);
    }
    if s < 86_400 {
        return format!("{} h {:02} min", s / 3600, (s % 3600) / 60);
    }
    format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
}

/// How long ago `t` was, coarsely: "just now", "40 s ago", "5 min ago",
/// "3 h ago", "2 days ago".
pub(crate) fn fmt_ago(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let s = (now - t).whole_seconds();
    match s {
        i64::MIN..5 => "just now".to_string(),
        5..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        86_400..172_800 => "yesterday".to_string(),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A byte count with a binary unit: "512 B", "1.4 MiB".
pub(crate) fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A core error message as a sentence for a banner: capital first letter,
/// one full stop.
pub(crate) fn sentence(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => format!(
            "{}{}.",
            c.to_uppercase(),
            chars.as_str().trim_end_matches('.')
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn durations_and_sizes_read_naturally() {
        let d = time::Duration::milliseconds;
        assert_eq!(fmt_duration(d(850)), "850 ms");
        assert_eq!(fmt_duration(d(4_240)), "4.2 s");
        assert_eq!(fmt_duration(d(185_000)), "3 min 05 s");
        assert_eq!(fmt_duration(d(7_800_000)), "2 h 10 min");
        assert_eq!(fmt_duration(d(-5)), "0 ms");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1_468_006), "1.4 MiB");
        assert_eq!(fmt_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        let now = datetime!(2025-01-02 12:00:00 UTC);
        assert_eq!(fmt_ago(now, now), "just now");
        assert_eq!(fmt_ago(now - time::Duration::seconds(40), now), "40 s ago");
        assert_eq!(fmt_ago(now - time::Duration::minutes(5), now), "5 min ago");
        assert_eq!(fmt_ago(now - time::Duration::days(3), now), "3 days ago");
        assert_eq!(fmt_clock(now), "12:00:00");
        assert_eq!(sentence("power control is off."), "Power control is off.");
    }
}
