//! The add and edit forms of a machine.
//!
//! The form is read in two passes: first here, collecting every mistake at
//! once (a wrong port and a bad MAC are both shown after one submit), then
//! by `App`, whose validation is the authority; its errors are mapped back
//! onto the form fields.

use super::Layout;
use crate::auth::{CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use anvil_api_types::{BmcInput, InterfaceInput, MachineCreate, MachinePatch};
use anvil_core::{App, Error, Principal};
use anvil_types::{
    Architecture, BmcDriver, Firmware, Hostname, Interface, MacAddr, Machine, ParseError,
};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use serde::Deserialize;
use std::collections::HashSet;

/// The form as posted. Every field is a string (the checkbox an option) so
/// that any input deserialises and mistakes are reported beside the field.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct MachineForm {
    csrf_token: String,
    hostname: String,
    architecture: String,
    firmware: String,
    vendor: String,
    model: String,
    serial: String,
    /// Comma-separated.
    tags: String,
    /// One per line (commas and spaces also separate).
    macs: String,
    bmc_driver: String,
    bmc_address: String,
    bmc_port: String,
    bmc_username: String,
    /// Write-only: never put back into a rendered form.
    bmc_password: String,
    bmc_verify_tls: Option<String>,
}

impl HasCsrfToken for MachineForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Values shown in the form's fields. There is no password here: a
/// password is never sent back to the browser, not even the one just typed.
pub(crate) struct FormValues {
    hostname: String,
    vendor: String,
    model: String,
    serial: String,
    tags: String,
    macs: String,
    bmc_address: String,
    bmc_port: String,
    bmc_username: String,
    bmc_verify_tls: bool,
}

impl FormValues {
    fn from_form(f: &MachineForm) -> Self {
        FormValues {
            hostname: f.hostname.clone(),
            vendor: f.vendor.clone(),
            model: f.model.clone(),
            serial: f.serial.clone(),
            tags: f.tags.clone(),
            macs: f.macs.clone(),
            bmc_address: f.bmc_address.clone(),
            bmc_port: f.bmc_port.clone(),
            bmc_username: f.bmc_username.clone(),
            bmc_verify_tls: f.bmc_verify_tls.is_some(),
        }
    }

    fn from_machine(m: &Machine) -> Self {
        let bmc = m.bmc.as_ref();
        FormValues {
            hostname: m.hostname.clone(),
            vendor: m.vendor.clone().unwrap_or_default(),
            model: m.model.clone().unwrap_or_default(),
            serial: m.serial.clone().unwrap_or_default(),
            tags: m.tags.join(", "),
            macs: m
                .interfaces
                .iter()
                .map(|i| i.mac.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            bmc_address: bmc.map(|b| b.address.clone()).unwrap_or_default(),
            bmc_port: bmc
                .and_then(|b| b.port)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            bmc_username: bmc.and_then(|b| b.username.clone()).unwrap_or_default(),
            bmc_verify_tls: bmc.is_none_or(|b| b.verify_tls),
        }
    }
}

/// A mistake in the form, shown beside `field` ("" for the whole form).
pub(crate) struct FieldError {
    pub(crate) field: &'static str,
    pub(crate) message: String,
    /// The machine that already has a duplicate hostname or MAC.
    pub(crate) link: Option<String>,
}

#[derive(Default)]
pub(crate) struct FieldErrors(pub(crate) Vec<FieldError>);

impl FieldErrors {
    pub(crate) fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError {
            field,
            message: message.into(),
            link: None,
        });
    }

    /// The error of one field, for the template.
    pub(crate) fn get(&self, field: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.field == field)
    }

    /// Errors about the form as a whole.
    pub(crate) fn general(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter().filter(|e| e.field.is_empty())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) struct Choice {
    pub(crate) value: &'static str,
    pub(crate) selected: bool,
}

pub(crate) fn choices<T: Copy>(
    all: &[T],
    name: impl Fn(T) -> &'static str,
    current: &str,
) -> Vec<Choice> {
    all.iter()
        .map(|&v| Choice {
            value: name(v),
            selected: name(v) == current,
        })
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/machine_form.html")]
struct MachineFormPage {
    layout: Layout,
    csrf: String,
    /// `Some(id)` when editing.
    editing: Option<String>,
    title: String,
    action: String,
    cancel_url: String,
    values: FormValues,
    errors: FieldErrors,
    architectures: Vec<Choice>,
    firmwares: Vec<Choice>,
    drivers: Vec<Choice>,
    /// Whether the machine has a stored BMC password (edit only).
    has_password: bool,
}

/// What the form needs besides the values: add or edit, and the current
/// choices of the selects.
struct FormContext {
    editing: Option<(String, String)>,
    architecture: String,
    firmware: String,
    driver: String,
    has_password: bool,
}

fn render(
    session: &Session,
    ctx: FormContext,
    values: FormValues,
    errors: FieldErrors,
    status: StatusCode,
) -> Response {
    let (editing, title, action, cancel_url) = match ctx.editing {
        Some((id, hostname)) => (
            Some(id.clone()),
            format!("Edit {hostname}"),
            format!("/machines/{id}/edit"),
            format!("/machines/{id}"),
        ),
        None => (
            None,
            "Add machine".to_string(),
            "/machines".to_string(),
            "/machines".to_string(),
        ),
    };
    let page = MachineFormPage {
        layout: Layout::for_session(session),
        csrf: session.csrf_token.clone(),
        editing,
        title,
        action,
        cancel_url,
        values,
        errors,
        architectures: choices(Architecture::ALL, Architecture::as_str, &ctx.architecture),
        firmwares: choices(Firmware::ALL, Firmware::as_str, &ctx.firmware),
        drivers: choices(BmcDriver::ALL, BmcDriver::as_str, &ctx.driver),
        has_password: ctx.has_password,
    };
    (status, page).into_response()
}

/// The form's values after the first pass.
struct Parsed {
    hostname: String,
    architecture: Option<Architecture>,
    firmware: Option<Firmware>,
    vendor: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    tags: Vec<String>,
    macs: Vec<MacAddr>,
    bmc: Option<BmcInput>,
}

pub(crate) fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

fn choice<T: std::str::FromStr<Err = ParseError>>(
    field: &'static str,
    v: &str,
    errors: &mut FieldErrors,
) -> Option<T> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    match v.parse() {
        Ok(x) => Some(x),
        Err(_) => {
            errors.add(field, format!("{v:?} is not one of the choices."));
            None
        }
    }
}

/// The first pass over the form: everything that can be checked without
/// the database, all mistakes at once.
fn parse(f: &MachineForm) -> Result<Parsed, FieldErrors> {
    let mut errors = FieldErrors::default();
    let hostname = f.hostname.trim();
    if hostname.is_empty() {
        errors.add("hostname", "A hostname is required.");
    } else if let Err(e) = hostname.parse::<Hostname>() {
        errors.add("hostname", format!("Not a valid hostname: {}.", e.message));
    }
    let architecture = choice("architecture", &f.architecture, &mut errors);
    let firmware = choice("firmware", &f.firmware, &mut errors);

    let mut macs = Vec::new();
    let mut bad = Vec::new();
    let mut seen = HashSet::new();
    for word in f
        .macs
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word.parse::<MacAddr>() {
            Ok(m) if !seen.insert(m) => bad.push(format!("{m} is listed twice")),
            Ok(m) => macs.push(m),
            Err(e) => bad.push(format!("{word:?} is not a MAC address ({})", e.message)),
        }
    }
    if !bad.is_empty() {
        errors.add("macs", format!("{}.", bad.join("; ")));
    }

    let any_bmc = [
        &f.bmc_driver,
        &f.bmc_address,
        &f.bmc_port,
        &f.bmc_username,
        &f.bmc_password,
    ]
    .iter()
    .any(|v| !v.trim().is_empty());
    let bmc = if any_bmc {
        let driver = choice::<BmcDriver>("bmc_driver", &f.bmc_driver, &mut errors);
        if driver.is_none() && f.bmc_driver.trim().is_empty() {
            errors.add("bmc_driver", "Choose how Anvil talks to this BMC.");
        }
        let address = f.bmc_address.trim();
        if address.is_empty() {
            errors.add(
                "bmc_address",
                "The BMC's host name or IP address is required.",
            );
        }
        let port = match f.bmc_port.trim() {
            "" => None,
            p => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    errors.add("bmc_port", "A port number from 1 to 65535.");
                    None
                }
            },
        };
        driver.map(|driver| BmcInput {
            driver,
            address: address.to_string(),
            port,
            username: non_empty(&f.bmc_username),
            // Not trimmed: a password may end in a space.
            password: Some(f.bmc_password.clone()).filter(|p| !p.is_empty()),
            verify_tls: Some(f.bmc_verify_tls.is_some()),
        })
    } else {
        None
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Parsed {
        hostname: hostname.to_string(),
        architecture,
        firmware,
        vendor: non_empty(&f.vendor),
        model: non_empty(&f.model),
        serial: non_empty(&f.serial),
        tags: f
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        macs,
        bmc,
    })
}

/// Puts an error of `App` beside the field it is about. Only mistakes the
/// user can fix come back as form errors; anything else is an error page.
fn form_errors(e: Error) -> Result<(StatusCode, FieldErrors), PageError> {
    let mut errors = FieldErrors::default();
    let status = match e {
        Error::Invalid { field, message } => {
            let target = match field.as_str() {
                "hostname" => "hostname",
                "architecture" => "architecture",
                "firmware" => "firmware",
                "vendor" => "vendor",
                "model" => "model",
                "serial" => "serial",
                f if f.starts_with("tags") => "tags",
                f if f.starts_with("interfaces") || f == "mac" => "macs",
                "bmc.address" => "bmc_address",
                "bmc.username" => "bmc_username",
                "bmc.password" => "bmc_password",
                _ => "",
            };
            errors.add(target, upper_first(&message));
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Duplicate {
            field,
            value,
            existing,
        } => {
            let (target, what) = match field {
                "hostname" => ("hostname", "The hostname"),
                "mac" => ("macs", "The MAC address"),
                _ => ("", "The value"),
            };
            errors.0.push(FieldError {
                field: target,
                message: format!("{what} {value} is already used by another machine."),
                link: existing.map(|id| format!("/machines/{id}")),
            });
            StatusCode::CONFLICT
        }
        Error::Concurrent { .. } => {
            errors.add(
                "",
                "Someone else changed this machine while you were editing. \
                 Check the values and save again.",
            );
            StatusCode::CONFLICT
        }
        other => return Err(other.into()),
    };
    Ok((status, errors))
}

pub(crate) fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `GET /machines/new`.
pub(crate) async fn new_page(session: Session) -> Response {
    let values = FormValues {
        hostname: String::new(),
        vendor: String::new(),
        model: String::new(),
        serial: String::new(),
        tags: String::new(),
        macs: String::new(),
        bmc_address: String::new(),
        bmc_port: String::new(),
        bmc_username: String::new(),
        bmc_verify_tls: true,
    };
    let ctx = FormContext {
        editing: None,
        architecture: "amd64".to_string(),
        firmware: "uefi".to_string(),
        driver: String::new(),
        has_password: false,
    };
    render(
        &session,
        ctx,
        values,
        FieldErrors::default(),
        StatusCode::OK,
    )
}

fn posted_context(
    f: &MachineForm,
    editing: Option<(String, String)>,
    has_password: bool,
) -> FormContext {
    FormContext {
        editing,
        architecture: f.architecture.trim().to_string(),
        firmware: f.firmware.trim().to_string(),
        driver: f.bmc_driver.trim().to_string(),
        has_password,
    }
}

/// `POST /machines`: creates the machine and shows its page, or the form
/// again with the mistakes.
pub(crate) async fn create(
    State(app): State<App>,
    CsrfForm { session, form }: CsrfForm<MachineForm>,
) -> Result<Response, PageError> {
    let again = |errors, status| {
        let ctx = posted_context(&form, None, false);
        Ok(render(
            &session,
            ctx,
            FormValues::from_form(&form),
            errors,
            status,
        ))
    };
    let p = match parse(&form) {
        Ok(p) => p,
        Err(errors) => return again(errors, StatusCode::UNPROCESSABLE_ENTITY),
    };
    let create = MachineCreate {
        hostname: p.hostname,
        architecture: p.architecture,
        firmware: p.firmware,
        vendor: p.vendor,
        model: p.model,
        serial: p.serial,
        tags: p.tags,
        facts: None,
        interfaces: p
            .macs
            .iter()
            .map(|m| InterfaceInput {
                mac: m.to_string(),
                name: None,
                pxe: None,
                ipv4: None,
            })
            .collect(),
        bmc: p.bmc,
    };
    let by = Principal::User(session.user.clone());
    match app.create_machine(&by, create).await {
        Ok(m) => Ok(Redirect::to(&format!("/machines/{}", m.id)).into_response()),
        Err(e) => {
            let (status, errors) = form_errors(e)?;
            again(errors, status)
        }
    }
}

/// `GET /machines/{id}/edit`.
pub(crate) async fn edit_page(
    session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let bmc = m.bmc.as_ref();
    let ctx = FormContext {
        editing: Some((m.id.to_string(), m.hostname.clone())),
        architecture: m
            .architecture
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        firmware: m
            .firmware
            .map(|f| f.as_str().to_string())
            .unwrap_or_default(),
        driver: bmc
            .map(|b| b.driver.as_str().to_string())
            .unwrap_or_default(),
        has_password: bmc.is_some_and(|b| b.has_password),
    };
    let values = FormValues::from_machine(&m);
    Ok(render(
        &session,
        ctx,
        values,
        FieldErrors::default(),
        StatusCode::OK,
    ))
}

/// The interfaces for a PATCH from the edited MAC list. An interface whose
/// MAC stays keeps its name, PXE flag and IPv4 reservation (the form does not
/// show them, so they must not be reset); a new MAC gets the first free
/// `ethN` and boots over PXE only if no other interface does.
fn interface_inputs(macs: &[MacAddr], existing: &[Interface]) -> Vec<InterfaceInput> {
    let kept: Vec<&Interface> = existing.iter().filter(|i| macs.contains(&i.mac)).collect();
    let mut names: HashSet<String> = kept.iter().map(|i| i.name.clone()).collect();
    let mut pxe_taken = kept.iter().any(|i| i.pxe);
    macs.iter()
        .map(|mac| match kept.iter().find(|i| i.mac == *mac) {
            Some(i) => InterfaceInput {
                mac: mac.to_string(),
                name: Some(i.name.clone()),
                pxe: Some(i.pxe),
                ipv4: i.ipv4.clone(),
            },
            None => {
                let name = (0..)
                    .map(|n| format!("eth{n}"))
                    .find(|n| !names.contains(n))
                    .unwrap_or_default();
                names.insert(name.clone());
                let pxe = !pxe_taken;
                pxe_taken = true;
                InterfaceInput {
                    mac: mac.to_string(),
                    name: Some(name),
                    pxe: Some(pxe),
                    ipv4: None,
                }
            }
        })
        .collect()
}

/// `POST /machines/{id}/edit`. Emptying every BMC field removes the BMC;
/// an empty password field keeps the stored password.
pub(crate) async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<MachineForm>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let has_password = m.bmc.as_ref().is_some_and(|b| b.has_password);
    let again = |errors, status| {
        let ctx = posted_context(
            &form,
            Some((m.id.to_string(), m.hostname.clone())),
            has_password,
        );
        Ok(render(
            &session,
            ctx,
            FormValues::from_form(&form),
            errors,
            status,
        ))
    };
    let p = match parse(&form) {
        Ok(p) => p,
        Err(errors) => return again(errors, StatusCode::UNPROCESSABLE_ENTITY),
    };
    let bmc = match p.bmc {
        Some(b) => Some(Some(b)),
        None if m.bmc.is_some() => Some(None),
        None => None,
    };
    let patch = MachinePatch {
        hostname: Some(p.hostname),
        architecture: Some(p.architecture),
        firmware: Some(p.firmware),
        vendor: Some(p.vendor),
        model: Some(p.model),
        serial: Some(p.serial),
        tags: Some(p.tags),
        facts: None,
        interfaces: Some(interface_inputs(&p.macs, &m.interfaces)),
        bmc,
    };
    let by = Principal::User(session.user.clone());
    match app.update_machine(&by, &m.id.to_string(), patch).await {
        Ok(updated) => Ok(Redirect::to(&format!("/machines/{}", updated.id)).into_response()),
        Err(e) => {
            let (status, errors) = form_errors(e)?;
            again(errors, status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn form(macs: &str) -> MachineForm {
        MachineForm {
            hostname: "node-1".into(),
            macs: macs.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let f = MachineForm {
            hostname: "bad_name".into(),
            architecture: "vax".into(),
            macs: "52:54:00:00:00:01\nzz\n52-54-00-00-00-01".into(),
            bmc_address: "10.0.0.1".into(),
            bmc_port: "99999".into(),
            ..Default::default()
        };
        let Err(e) = parse(&f) else {
            panic!("the form has mistakes")
        };
        for field in ["hostname", "architecture", "macs", "bmc_driver", "bmc_port"] {
            assert!(e.get(field).is_some(), "no error for {field}");
        }
        let macs = &e
            .get("macs")
            .map(|e| e.message.as_str())
            .unwrap_or_default();
        assert!(
            macs.contains("\"zz\"") && macs.contains("listed twice"),
            "{macs}"
        );
    }

    #[test]
    fn macs_split_on_lines_commas_and_spaces() {
        let p = parse(&form(
            "52:54:00:00:00:01\r\n 52:54:00:00:00:02, 525400000003\n\n",
        ))
        .map_err(|e| e.0.len())
        .unwrap();
        assert_eq!(p.macs.len(), 3);
        assert!(p.bmc.is_none(), "no BMC field filled: no BMC");
    }

    #[test]
    fn edited_macs_keep_their_interface_settings() {
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let existing = vec![
            Interface {
                id: Uuid::now_v7(),
                mac: mac("52:54:00:00:00:01"),
                name: "eno1".into(),
                pxe: false,
                ipv4: Some("10.0.0.5".into()),
            },
            Interface {
                id: Uuid::now_v7(),
                mac: mac("52:54:00:00:00:02"),
                name: "eth0".into(),
                pxe: true,
                ipv4: None,
            },
        ];
        let out = interface_inputs(
            &[
                mac("52:54:00:00:00:03"),
                mac("52:54:00:00:00:01"),
                mac("52:54:00:00:00:02"),
            ],
            &existing,
        );
        assert_eq!(out[1].name.as_deref(), Some("eno1"));
        assert_eq!(out[1].ipv4.as_deref(), Some("10.0.0.5"));
        assert_eq!(out[2].pxe, Some(true));
        assert_eq!(out[0].name.as_deref(), Some("eth1"), "eth0 is taken");
        assert_eq!(out[0].pxe, Some(false), "eth0 already boots over PXE");
    }

    #[test]
    fn core_errors_land_beside_their_field() {
        let (status, e) = form_errors(Error::invalid("interfaces[1].mac", "bad")).unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.get("macs").is_some());
        let (status, e) = form_errors(Error::Duplicate {
            field: "hostname",
            value: "node-1".into(),
            existing: Some(Uuid::nil()),
        })
        .unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
        let err = e.get("hostname").unwrap();
        assert_eq!(
            err.link.as_deref(),
            Some(&*format!("/machines/{}", Uuid::nil()))
        );
        assert!(
            form_errors(Error::Forbidden("no")).is_err(),
            "not a form error"
        );
    }
}
