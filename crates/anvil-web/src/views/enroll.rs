//! "Add server by BMC": Anvil asks the BMC what the server is and creates
//! the machine with the NICs the BMC reports, so it is recognised when it
//! PXE-boots. Enrolling a BMC that is already enrolled shows its machine.

use super::Layout;
use super::machine_form::{Choice, FieldError, FieldErrors, choices, non_empty, upper_first};
use super::power::NOT_ENABLED;
use crate::auth::{CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use anvil_api_types::EnrollRequest;
use anvil_core::{App, Error, Principal};
use anvil_types::{BmcDriver, Hostname};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use serde::Deserialize;

/// The form as posted; every field a string so any input deserialises and
/// mistakes are reported beside their field.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct EnrollForm {
    csrf_token: String,
    driver: String,
    address: String,
    port: String,
    username: String,
    /// Write-only: never put back into a rendered form.
    password: String,
    hostname: String,
    verify_tls: Option<String>,
    /// Comma-separated.
    tags: String,
}

impl HasCsrfToken for EnrollForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// What the fields show. There is no password: it is never sent back.
pub(crate) struct EnrollValues {
    address: String,
    port: String,
    username: String,
    hostname: String,
    verify_tls: bool,
    tags: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/enroll.html")]
struct EnrollPage {
    layout: Layout,
    csrf: String,
    values: EnrollValues,
    drivers: Vec<Choice>,
    errors: FieldErrors,
}

fn render(
    session: &Session,
    driver: &str,
    values: EnrollValues,
    errors: FieldErrors,
    status: StatusCode,
) -> Response {
    let page = EnrollPage {
        layout: Layout::for_session(session),
        csrf: session.csrf_token.clone(),
        values,
        drivers: choices(BmcDriver::ALL, BmcDriver::as_str, driver),
        errors,
    };
    (status, page).into_response()
}

/// `GET /machines/enroll`.
pub(crate) async fn page(session: Session) -> Response {
    let values = EnrollValues {
        address: String::new(),
        port: String::new(),
        username: String::new(),
        hostname: String::new(),
        verify_tls: true,
        tags: String::new(),
    };
    render(
        &session,
        BmcDriver::Redfish.as_str(),
        values,
        FieldErrors::default(),
        StatusCode::OK,
    )
}

/// The first pass: everything that can be checked without the BMC, all
/// mistakes at once.
fn parse(f: &EnrollForm) -> Result<EnrollRequest, FieldErrors> {
    let mut errors = FieldErrors::default();
    let driver = match f.driver.trim() {
        "" => {
            errors.add("driver", "Choose how Anvil talks to this BMC.");
            None
        }
        d => match d.parse::<BmcDriver>() {
            Ok(d) => Some(d),
            Err(_) => {
                errors.add("driver", format!("{d:?} is not one of the choices."));
                None
            }
        },
    };
    let address = f.address.trim();
    if address.is_empty() {
        errors.add("address", "The BMC's host name or IP address is required.");
    }
    let port = match f.port.trim() {
        "" => None,
        p => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                errors.add("port", "A port number from 1 to 65535.");
                None
            }
        },
    };
    let hostname = non_empty(&f.hostname);
    if let Some(h) = &hostname
        && let Err(e) = h.parse::<Hostname>()
    {
        errors.add("hostname", format!("Not a valid hostname: {}.", e.message));
    }
    match driver {
        Some(driver) if errors.is_empty() => Ok(EnrollRequest {
            driver,
            address: address.to_string(),
            port,
            username: non_empty(&f.username),
            // Not trimmed: a password may end in a space.
            password: Some(f.password.clone()).filter(|p| !p.is_empty()),
            hostname,
            verify_tls: Some(f.verify_tls.is_some()),
            tags: f
                .tags
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            macs: Vec::new(),
        }),
        _ => Err(errors),
    }
}

/// An enrolment error of `App` beside the field it is about. A BMC that
/// cannot be reached or refuses the login is the form's to show, with the
/// BMC's own words (they never contain the password).
fn form_errors(e: Error) -> Result<(StatusCode, FieldErrors), PageError> {
    let mut errors = FieldErrors::default();
    let status = match e {
        Error::PowerDisabled => {
            errors.add("", NOT_ENABLED);
            StatusCode::CONFLICT
        }
        Error::Invalid { field, message } => {
            let target = match field.as_str() {
                "address" | "bmc.address" => "address",
                "port" => "port",
                "username" | "bmc.username" => "username",
                "password" | "bmc.password" => "password",
                "hostname" => "hostname",
                f if f.starts_with("tags") => "tags",
                _ => "",
            };
            errors.add(target, upper_first(&message));
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Bmc(m) => {
            errors.add(
                "",
                format!(
                    "Anvil could not enroll this server: {}. Check the address, \
                     the credentials and the TLS setting.",
                    m.trim_end_matches('.')
                ),
            );
            StatusCode::CONFLICT
        }
        Error::Duplicate {
            field,
            value,
            existing,
        } => {
            let (target, message) = match field {
                "hostname" => (
                    "hostname",
                    format!("The hostname {value} is already used by another machine."),
                ),
                "mac" => (
                    "",
                    format!(
                        "The BMC reports a network card with MAC {value}, which another \
                         machine already has. Remove it there, or edit that machine instead."
                    ),
                ),
                _ => ("", format!("{value} is already used by another machine.")),
            };
            errors.0.push(FieldError {
                field: target,
                message,
                link: existing.map(|id| format!("/machines/{id}")),
            });
            StatusCode::CONFLICT
        }
        other => return Err(other.into()),
    };
    Ok((status, errors))
}

/// `POST /machines/enroll`: probes the BMC, creates the machine and shows
/// it (or the machine the BMC already belongs to); the form again on any
/// mistake, never with the password.
pub(crate) async fn submit(
    State(app): State<App>,
    CsrfForm { session, form }: CsrfForm<EnrollForm>,
) -> Result<Response, PageError> {
    let again = |errors, status| {
        let values = EnrollValues {
            address: form.address.clone(),
            port: form.port.clone(),
            username: form.username.clone(),
            hostname: form.hostname.clone(),
            verify_tls: form.verify_tls.is_some(),
            tags: form.tags.clone(),
        };
        Ok(render(&session, form.driver.trim(), values, errors, status))
    };
    let req = match parse(&form) {
        Ok(r) => r,
        Err(errors) => return again(errors, StatusCode::UNPROCESSABLE_ENTITY),
    };
    let by = Principal::User(session.user.clone());
    match app.enroll(&by, req).await {
        Ok(r) => {
            let how = if r.created { "new" } else { "already" };
            Ok(Redirect::to(&format!("/machines/{}?enrolled={how}", r.machine.id)).into_response())
        }
        Err(e) => {
            let (status, errors) = form_errors(e)?;
            again(errors, status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mistake_is_reported_at_once() {
        let f = EnrollForm {
            driver: "smoke-signals".into(),
            port: "0".into(),
            hostname: "bad_name".into(),
            password: "secret".into(),
            ..Default::default()
        };
        let Err(e) = parse(&f) else {
            panic!("the form has mistakes")
        };
        for field in ["driver", "address", "port", "hostname"] {
            assert!(e.get(field).is_some(), "no error for {field}");
        }
    }

    #[test]
    fn a_good_form_becomes_a_request() {
        let f = EnrollForm {
            driver: "ipmi".into(),
            address: " 10.0.0.7 ".into(),
            port: "623".into(),
            username: "ADMIN".into(),
            password: "pass word ".into(),
            verify_tls: None,
            tags: "rack1, ,gpu".into(),
            ..Default::default()
        };
        let r = parse(&f).map_err(|e| e.0.len()).unwrap();
        assert_eq!(r.driver, BmcDriver::Ipmi);
        assert_eq!(r.address, "10.0.0.7");
        assert_eq!(r.port, Some(623));
        assert_eq!(r.password.as_deref(), Some("pass word "));
        assert_eq!(r.verify_tls, Some(false));
        assert_eq!(r.hostname, None);
        assert_eq!(r.tags, ["rack1", "gpu"]);
    }

    #[test]
    fn bmc_failures_are_form_errors() {
        let (status, e) = form_errors(Error::Bmc(
            "the BMC at 10.0.0.9 refused the credentials".into(),
        ))
        .unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
        let general: Vec<_> = e.general().map(|e| e.message.as_str()).collect();
        assert!(
            general[0].contains("refused the credentials"),
            "{general:?}"
        );
        let (_, e) = form_errors(Error::invalid("address", "a host name or IP address")).unwrap();
        assert!(e.get("address").is_some());
    }
}
