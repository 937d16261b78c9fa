//! Page handlers, one module per area. Each page is a template struct holding
//! ready-to-print strings, so templates stay free of logic beyond loops and
//! conditionals.

pub(crate) mod login;
pub(crate) mod machine_form;
pub(crate) mod machines;

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
