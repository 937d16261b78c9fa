//! Redfish implementation of [`anvil_power::PowerDriver`].
//!
//! One [`RedfishDriver`] talks to one BMC and one ComputerSystem on it:
//! power state and actions (`ComputerSystem.Reset` with a `ResetType` the
//! system advertises), a one-time or persistent boot override (PATCH of
//! `Boot`, with `If-Match` when the BMC uses ETags) and out-of-band
//! inventory (system, processors, NICs, drives, BMC firmware).
//!
//! Transport: HTTPS by default with certificate verification (the system
//! trust store, or only a pinned CA), a session (`X-Auth-Token`) when the
//! service offers one and basic auth otherwise, retries with exponential
//! backoff on connection failures, 5xx and 429 (honouring `Retry-After`),
//! and redirects followed only on the BMC itself.
//!
//! Secrets: the password is sent only to the BMC (in a session login or an
//! `Authorization` header) and never appears in an error, a log line or a
//! result; everything that came from the BMC is scrubbed of it and of URL
//! userinfo before it is logged or returned.
//!
//! Vendor departures from the standard are data ([`Quirks`], one row per
//! [`Vendor`]), explained with their sources in `docs/redfish-quirks.md`.

mod address;
mod http;
mod quirks;
mod redact;
mod tls;

pub use quirks::{BootModePolicy, IfMatchPolicy, QUIRKS, Quirks, Vendor};

use address::Endpoint;
use anvil_power::{
    BmcCredentials, BootDevice, BootMode, BootOverride, Cpu, Disk, Inventory, Nic, PowerAction,
    PowerDriver, PowerError, PowerState,
};
use anvil_types::MacAddr;
use futures::future::BoxFuture;
use http::{Keep, Limits, Transport, odata_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Collections are paged with `Members@odata.nextLink`; a BMC that never
/// stops paging is broken.
const MAX_PAGES: usize = 64;

/// What the power and boot steps read of a ComputerSystem (the state, the
/// override and its allowed values, the reset action, the settings object,
/// the ETag); the rest of the document is skipped while parsing. The
/// inventory reads the whole document.
const STEP_MEMBERS: &[&str] = &[
    "@odata.id",
    "@odata.etag",
    "PowerState",
    "Boot",
    "Actions",
    "@Redfish.Settings",
];

/// How the driver behaves towards its BMC.
#[derive(Debug, Clone)]
pub struct RedfishOptions {
    /// Per HTTP request (connect + answer). A request that times out after
    /// being sent is not retried: it may have taken effect.
    pub timeout: Duration,
    /// Extra attempts after a connection failure, a 5xx or a 429.
    pub retries: u32,
    /// First wait between attempts; doubles each time (capped at 60 s, and
    /// never shorter than the BMC's `Retry-After`).
    pub backoff: Duration,
    /// How long to wait for an asynchronous operation the driver itself
    /// waits on: a task monitor, and the Off state inside a power cycle
    /// done as ForceOff + On.
    pub poll_timeout: Duration,
    /// Use this vendor's quirks instead of detecting it from the
    /// ComputerSystem's `Manufacturer`.
    pub vendor: Option<Vendor>,
    /// The ComputerSystem to manage (its `Id`, the last segment of its URI);
    /// default: the first member of the Systems collection.
    pub system_id: Option<String>,
    /// A complete quirk row replacing the vendor's (for firmware that needs
    /// something the table does not know yet).
    pub quirks: Option<Quirks>,
    /// How long a ComputerSystem document this driver read may stand in for
    /// a new GET in `set_boot` and `power` (zero: always GET). A power
    /// action is typically "read the state, set the boot override, reset"
    /// within milliseconds; re-reading the same document before each step
    /// cost about two extra requests (each a new TCP connection on BMCs
    /// that close every connection) per action. `power_state` always reads.
    pub system_cache_ttl: Duration,
}

impl Default for RedfishOptions {
    fn default() -> Self {
        RedfishOptions {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(500),
            poll_timeout: Duration::from_secs(300),
            vendor: None,
            system_id: None,
            quirks: None,
            system_cache_ttl: Duration::from_secs(2),
        }
    }
}

/// The boot override as the BMC reports it (`ComputerSystem.Boot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSettings {
    /// `BootSourceOverrideTarget`, e.g. `Pxe`, `Hdd`, `None`.
    pub target: Option<String>,
    /// `BootSourceOverrideEnabled`: `Disabled`, `Once` or `Continuous`.
    pub enabled: Option<String>,
    /// `BootSourceOverrideMode`: `UEFI` or `Legacy`.
    pub mode: Option<String>,
}

/// What discovery found; fixed for the driver's lifetime.
#[derive(Debug, Clone)]
struct Discovery {
    system: String,
    manager: Option<String>,
    quirks: Quirks,
}

/// One read of the managed ComputerSystem.
struct SystemSnapshot {
    body: Value,
    /// `ETag` header or `@odata.etag`, for `If-Match`.
    etag: Option<String>,
    read_at: Instant,
}

/// The last ComputerSystem document read, reused for a short while by
/// `set_boot` and `power` (see `RedfishOptions::system_cache_ttl`).
#[derive(Default)]
struct SystemCache {
    latest: Option<Arc<SystemSnapshot>>,
    /// A boot PATCH succeeded after `latest` was read: its `Boot` and its
    /// ETag no longer match the BMC, while `PowerState` and `Actions`, which
    /// a boot override does not touch, still do. A later `set_boot` must
    /// not compute its PATCH (allowable values, the mode to echo) or its
    /// `If-Match` from it, so it reads again; `power` may still use it.
    boot_outdated: bool,
    /// Bumped whenever the BMC's system changed under us (a reset sent, a
    /// PATCH sent). A GET that was in flight across such a change may carry
    /// the old state, so it is returned to its caller but not stored.
    generation: u64,
}

/// `ComputerSystem.Reset` as one system advertises it.
struct ResetAction {
    target: String,
    /// `None` when the BMC does not say: the standard values are tried.
    allowed: Option<Vec<String>>,
}

/// A Redfish BMC. Cheap to call repeatedly: the discovery and the session
/// are kept between calls. Call [`RedfishDriver::close`] when done; a driver
/// dropped with a session open deletes it from a background task.
pub struct RedfishDriver {
    http: Transport,
    options: RedfishOptions,
    /// The system the address names (`…/redfish/v1/Systems/<id>`), if any:
    /// it wins over `options.system_id` and needs no Systems listing.
    named_system: Option<String>,
    discovery: tokio::sync::OnceCell<Discovery>,
    system_cache: Mutex<SystemCache>,
}

impl RedfishDriver {
    /// Checks the configuration and builds the HTTP client; contacts
    /// nothing (the first call discovers the service and logs in).
    pub fn new(creds: BmcCredentials, options: RedfishOptions) -> Result<Self, PowerError> {
        if options.timeout.is_zero() {
            return Err(PowerError::Config(
                "the Redfish timeout must not be zero".into(),
            ));
        }
        let endpoint = Endpoint::parse(&creds.address, creds.port)?;
        let named_system = endpoint.system.clone();
        if endpoint.base.scheme() == "http" && creds.username.is_some() {
            warn!(bmc = %endpoint.display, "plain HTTP: the BMC credentials cross the network unencrypted");
        }
        let tls =
            tls::client_config(creds.verify_tls, creds.ca_pem.as_deref()).map_err(|e| match e {
                tls::TlsSetupError::BadCa(reason) => PowerError::Config(format!(
                    "the CA pinned for the BMC at {}: {reason}",
                    endpoint.display
                )),
                tls::TlsSetupError::Verifier(reason) => PowerError::Tls {
                    address: endpoint.display.clone(),
                    reason,
                },
            })?;
        let limits = Limits {
            timeout: options.timeout,
            retries: options.retries,
            backoff: options.backoff,
        };
        let http = Transport::new(endpoint, creds.username, creds.password, tls, limits)?;
        Ok(RedfishDriver {
            http,
            options,
            named_system,
            discovery: tokio::sync::OnceCell::new(),
            system_cache: Mutex::new(SystemCache::default()),
        })
    }

    /// `host:port` of the BMC, as used in errors.
    pub fn address(&self) -> &str {
        self.http.address()
    }

    /// Logs out (DELETEs the session, if one was created). Best effort: a
    /// BMC that cannot be reached expires the session by itself. Later calls
    /// log in again.
    pub async fn close(&self) {
        self.http.logout().await;
    }

    /// The vendor whose quirks are applied (detected or configured).
    pub async fn vendor(&self) -> Result<Vendor, PowerError> {
        Ok(self.discover().await?.quirks.vendor)
    }

    /// The URI of the managed ComputerSystem.
    pub async fn system_uri(&self) -> Result<String, PowerError> {
        Ok(self.discover().await?.system.clone())
    }

    /// The boot override as the BMC currently reports it.
    pub async fn boot_settings(&self) -> Result<BootSettings, PowerError> {
        let d = self.discover().await?;
        let sys = self.read_system(d).await?;
        let boot = sys.body.get("Boot").unwrap_or(&Value::Null);
        Ok(BootSettings {
            target: text(boot, "BootSourceOverrideTarget"),
            enabled: text(boot, "BootSourceOverrideEnabled"),
            mode: text(boot, "BootSourceOverrideMode"),
        })
    }

    async fn discover(&self) -> Result<&Discovery, PowerError> {
        self.discovery.get_or_try_init(|| self.do_discover()).await
    }

    async fn do_discover(&self) -> Result<Discovery, PowerError> {
        let root = self.http.send_anonymous("/redfish/v1/").await?;
        let root = if root.status == StatusCode::UNAUTHORIZED {
            // Non-conforming services protect the root too; assume the
            // standard session URI (a refusal falls back to basic auth).
            self.http
                .set_sessions_uri(Some("/redfish/v1/SessionService/Sessions".into()));
            self.get("/redfish/v1/").await?
        } else {
            let root = root.ok(&self.http, "GET /redfish/v1/")?;
            let sessions = root
                .body
                .pointer("/Links/Sessions")
                .and_then(odata_id)
                .map(str::to_string)
                .or_else(|| {
                    root.body
                        .get("SessionService")
                        .map(|_| "/redfish/v1/SessionService/Sessions".to_string())
                });
            self.http.set_sessions_uri(sessions);
            root
        };

        let systems = link(&root.body, "Systems").unwrap_or_else(|| "/redfish/v1/Systems".into());
        let chosen = match (&self.named_system, &self.options.system_id) {
            (Some(uri), _) => uri.clone(),
            (None, Some(id)) => self
                .members(&systems)
                .await?
                .iter()
                .find(|m| last_segment(m) == id.as_str())
                .cloned()
                // Not listed under that Id: ask for it directly (services
                // may alias systems by name and redirect, like sushy-tools).
                .unwrap_or_else(|| format!("{}/{}", systems.trim_end_matches('/'), id)),
            (None, None) => self
                .members(&systems)
                .await?
                .first()
                .cloned()
                .ok_or_else(|| PowerError::Protocol {
                    address: self.address().to_string(),
                    detail: "the Systems collection is empty".into(),
                })?,
        };
        let sys = self.get(&chosen).await?;
        // The canonical URI, after any redirect.
        let system = odata_id(&sys.body).map(str::to_string).unwrap_or(chosen);

        let vendor = self.options.vendor.unwrap_or_else(|| {
            let from_system = text(&sys.body, "Manufacturer")
                .map(|m| Vendor::detect(&m))
                .unwrap_or(Vendor::Generic);
            if from_system != Vendor::Generic {
                return from_system;
            }
            // Fall back to the service root: its `Vendor` (Redfish 1.5+)
            // or an `Oem` section named after the vendor.
            let from_root = text(&root.body, "Vendor").map(|v| Vendor::detect(&v));
            let from_oem = root
                .body
                .get("Oem")
                .and_then(Value::as_object)
                .and_then(|o| {
                    o.keys()
                        .map(|k| Vendor::detect(k))
                        .find(|v| *v != Vendor::Generic)
                });
            from_root
                .filter(|v| *v != Vendor::Generic)
                .or(from_oem)
                .unwrap_or(Vendor::Generic)
        });
        let quirks = self.options.quirks.unwrap_or_else(|| vendor.quirks());

        let manager = match sys.body.pointer("/Links/ManagedBy/0").and_then(odata_id) {
            Some(m) => Some(m.to_string()),
            None => match link(&root.body, "Managers") {
                Some(managers) => self
                    .optional("Managers", self.members(&managers).await)?
                    .and_then(|m| m.into_iter().next()),
                None => None,
            },
        };
        debug!(bmc = %self.address(), system = %system, vendor = %quirks.vendor, "Redfish service discovered");
        // The document just read seeds the cache: a first `set_boot` right
        // after discovery needs no second GET of it.
        let generation = self.cache().generation;
        self.store_system(
            generation,
            Arc::new(SystemSnapshot {
                body: sys.body,
                etag: sys.etag,
                read_at: Instant::now(),
            }),
        );
        Ok(Discovery {
            system,
            manager,
            quirks,
        })
    }

    async fn get(&self, path: &str) -> Result<http::Response, PowerError> {
        self.http
            .send(Method::GET, path, None, None)
            .await?
            .ok(&self.http, &format!("GET {path}"))
    }

    /// The member URIs of a collection, following `Members@odata.nextLink`.
    async fn members(&self, path: &str) -> Result<Vec<String>, PowerError> {
        let mut out = Vec::new();
        let mut next = Some(path.to_string());
        let mut pages = 0;
        while let Some(page) = next.take() {
            let r = self.get(&page).await?;
            out.extend(
                r.body
                    .get("Members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(odata_id)
                    .map(str::to_string),
            );
            pages += 1;
            if pages < MAX_PAGES {
                next = text(&r.body, "Members@odata.nextLink");
            }
        }
        Ok(out)
    }

    /// For the optional parts of an inventory: failures that say the BMC
    /// cannot be used at all propagate, anything else (a missing or broken
    /// sub-resource) is logged and skipped.
    fn optional<T>(&self, what: &str, r: Result<T, PowerError>) -> Result<Option<T>, PowerError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(
                e @ (PowerError::AuthFailed { .. }
                | PowerError::Unreachable { .. }
                | PowerError::Tls { .. }
                | PowerError::Timeout { .. }),
            ) => Err(e),
            Err(e) => {
                debug!(bmc = %self.address(), what, error = %e, "skipped");
                Ok(None)
            }
        }
    }

    fn cache(&self) -> MutexGuard<'_, SystemCache> {
        // The cache holds no invariant a panicking holder could break.
        self.system_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store_system(&self, generation: u64, snapshot: Arc<SystemSnapshot>) {
        let mut cache = self.cache();
        if cache.generation == generation {
            cache.latest = Some(snapshot);
            cache.boot_outdated = false;
        }
    }

    /// GETs the ComputerSystem (the members the power and boot steps use)
    /// and remembers the answer.
    async fn read_system(&self, d: &Discovery) -> Result<Arc<SystemSnapshot>, PowerError> {
        self.read_system_keeping(d, Keep::Only(STEP_MEMBERS)).await
    }

    async fn read_system_keeping(
        &self,
        d: &Discovery,
        keep: Keep,
    ) -> Result<Arc<SystemSnapshot>, PowerError> {
        let generation = self.cache().generation;
        let path = &d.system;
        let r = self
            .http
            .send_keeping(Method::GET, path, None, None, keep)
            .await?
            .ok(&self.http, &format!("GET {path}"))?;
        let snapshot = Arc::new(SystemSnapshot {
            body: r.body,
            etag: r.etag,
            read_at: Instant::now(),
        });
        self.store_system(generation, snapshot.clone());
        Ok(snapshot)
    }

    /// The ComputerSystem for a step of an action: the remembered document
    /// while it is younger than `system_cache_ttl` (and, when `needs_boot`,
    /// no boot PATCH has happened since it was read), else a new GET.
    async fn system_for_step(
        &self,
        d: &Discovery,
        needs_boot: bool,
    ) -> Result<Arc<SystemSnapshot>, PowerError> {
        let cached = {
            let cache = self.cache();
            cache
                .latest
                .as_ref()
                .filter(|s| s.read_at.elapsed() < self.options.system_cache_ttl)
                .filter(|_| !(needs_boot && cache.boot_outdated))
                .cloned()
        };
        match cached {
            Some(s) => Ok(s),
            None => self.read_system(d).await,
        }
    }

    /// The system changed (or may have): nothing read before is reused.
    fn forget_system(&self) {
        let mut cache = self.cache();
        cache.latest = None;
        cache.generation += 1;
    }

    /// A boot PATCH succeeded: the remembered document keeps serving
    /// `power` (a boot override changes neither PowerState nor Actions) but
    /// no longer `set_boot`.
    fn boot_written(&self) {
        let mut cache = self.cache();
        cache.boot_outdated = true;
        // A GET in flight across the PATCH may carry the old Boot.
        cache.generation += 1;
    }

    /// Always a new GET, never the remembered document: this is what
    /// `anvil_power::wait_for_state` polls (also inside a ForceOff + On
    /// cycle), and polling exists to see the BMC change; a remembered
    /// answer would report the state from before the change for up to
    /// `system_cache_ttl`. It refreshes the remembered document, so the
    /// `set_boot` and `power` that usually follow it send no GET of their own.
    async fn read_power_state(&self) -> Result<PowerState, PowerError> {
        let d = self.discover().await?;
        let sys = self.read_system(d).await?;
        power_state_of(&sys.body).ok_or_else(|| PowerError::Protocol {
            address: self.address().to_string(),
            detail: format!(
                "unknown PowerState {:?}",
                self.http.scrub(
                    &sys.body
                        .get("PowerState")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string()
                )
            ),
        })
    }

    async fn reset_action(&self, system: &Value) -> Result<ResetAction, PowerError> {
        let action = system
            .pointer("/Actions/#ComputerSystem.Reset")
            .ok_or_else(|| self.not_supported("ComputerSystem.Reset"))?;
        let target = text(action, "target").ok_or_else(|| PowerError::Protocol {
            address: self.address().to_string(),
            detail: "ComputerSystem.Reset has no target".into(),
        })?;
        let mut allowed = strings(action.get("ResetType@Redfish.AllowableValues"));
        if allowed.is_none()
            && let Some(info) = text(action, "@Redfish.ActionInfo")
        {
            // Newer services describe the parameters in an ActionInfo.
            let info = self.optional("ActionInfo", self.get(&info).await)?;
            allowed = info.and_then(|i| {
                i.body
                    .get("Parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))
                    .and_then(|p| strings(p.get("AllowableValues")))
            });
        }
        Ok(ResetAction { target, allowed })
    }

    fn choose(&self, reset: &ResetAction, prefs: &[&str]) -> Result<String, PowerError> {
        let chosen = match &reset.allowed {
            None => prefs.first().copied(),
            Some(allowed) => prefs
                .iter()
                .copied()
                .find(|p| allowed.iter().any(|a| a == p)),
        };
        chosen.map(str::to_string).ok_or_else(|| {
            self.not_supported(&format!(
                "ResetType {} (it offers {})",
                prefs.join(" or "),
                reset.allowed.as_deref().unwrap_or_default().join(", ")
            ))
        })
    }

    async fn post_reset(&self, reset: &ResetAction, reset_type: &str) -> Result<(), PowerError> {
        let r = self
            .send_reset(reset, reset_type)
            .await?
            .ok(&self.http, &format!("ComputerSystem.Reset {reset_type}"))?;
        self.reset_accepted(&r, reset_type).await
    }

    /// POSTs the Reset and forgets the remembered system: whatever the
    /// answer (even none: a timeout may have taken effect), the PowerState
    /// read before is now stale.
    async fn send_reset(
        &self,
        reset: &ResetAction,
        reset_type: &str,
    ) -> Result<http::Response, PowerError> {
        let body = json!({ "ResetType": reset_type });
        let sent = self
            .http
            .send(Method::POST, &reset.target, Some(&body), None)
            .await;
        self.forget_system();
        sent
    }

    async fn reset_accepted(&self, r: &http::Response, reset_type: &str) -> Result<(), PowerError> {
        debug!(bmc = %self.address(), reset_type, status = r.status.as_u16(), "reset accepted");
        self.await_task_of(r).await
    }

    async fn do_power(&self, action: PowerAction) -> Result<(), PowerError> {
        let d = self.discover().await?;
        // A document read within `system_cache_ttl` (typically by the
        // `power_state` that chose this action) decides: the BMC changes its
        // PowerState only through a reset, after which it is forgotten.
        let sys = self.system_for_step(d, false).await?;
        let raw = sys.body.get("PowerState").and_then(Value::as_str);
        let is_on = matches!(raw, Some("On" | "PoweringOn"));
        let is_off = matches!(raw, Some("Off" | "PoweringOff"));
        let reset = self.reset_action(&sys.body).await?;
        let q = &d.quirks;
        // Actions whose end state already holds are not sent: several BMCs
        // answer On-while-on or Off-while-off with an error instead of a no-op.
        match action {
            PowerAction::On if is_on => Ok(()),
            PowerAction::ForceOff | PowerAction::SoftOff if is_off => Ok(()),
            // A reset or cycle of a machine that is off ends running: start it.
            PowerAction::On | PowerAction::Reset | PowerAction::Cycle if is_off => {
                let t = self.choose(&reset, q.power_on)?;
                self.post_reset(&reset, &t).await
            }
            PowerAction::On => {
                let t = self.choose(&reset, q.power_on)?;
                self.post_reset(&reset, &t).await
            }
            PowerAction::ForceOff => {
                let t = self.choose(&reset, &["ForceOff"])?;
                self.post_reset(&reset, &t).await
            }
            PowerAction::SoftOff => {
                let t = self.choose(&reset, &["GracefulShutdown"])?;
                self.post_reset(&reset, &t).await
            }
            PowerAction::Reset => {
                let t = self.choose(&reset, q.reset)?;
                self.post_reset(&reset, &t).await
            }
            PowerAction::Cycle => {
                if let Ok(t) = self.choose_advertised(&reset, q.cycle) {
                    return self.post_reset(&reset, &t).await;
                }
                // No cycle of its own: off, wait until it is off, on.
                let off = self.choose(&reset, &["ForceOff"])?;
                self.post_reset(&reset, &off).await?;
                anvil_power::wait_for_state(
                    self,
                    self.address(),
                    PowerState::Off,
                    self.options.poll_timeout,
                )
                .await?;
                let on = self.choose(&reset, q.power_on)?;
                self.post_reset(&reset, &on).await
            }
        }
    }

    /// Like `choose`, but only a value the BMC explicitly advertises: a
    /// cycle type is never guessed.
    fn choose_advertised(&self, reset: &ResetAction, prefs: &[&str]) -> Result<String, PowerError> {
        match &reset.allowed {
            Some(_) => self.choose(reset, prefs),
            None => Err(self.not_supported("an advertised power cycle")),
        }
    }

    /// A `202 Accepted` with a task monitor (`Location`) is polled until its
    /// task ends; any other success is done already.
    async fn await_task_of(&self, r: &http::Response) -> Result<(), PowerError> {
        match &r.location {
            Some(monitor) if r.status == StatusCode::ACCEPTED => self.wait_task(monitor).await,
            _ => Ok(()),
        }
    }

    /// Polls a task monitor (a 202's `Location`) until the task ends.
    async fn wait_task(&self, monitor: &str) -> Result<(), PowerError> {
        let deadline = tokio::time::Instant::now() + self.options.poll_timeout;
        let mut delay = Duration::from_millis(250);
        loop {
            let r = self.http.send(Method::GET, monitor, None, None).await?;
            match r.status {
                StatusCode::ACCEPTED => {}
                s if s.is_success() => match r.body.get("TaskState").and_then(Value::as_str) {
                    None | Some("Completed") => return Ok(()),
                    Some(state @ ("Exception" | "Killed" | "Cancelled")) => {
                        let why = task_messages(&r.body);
                        return Err(PowerError::Protocol {
                            address: self.address().to_string(),
                            detail: self.http.scrub(&format!("the BMC task ended {state}{why}")),
                        });
                    }
                    Some(_) => {}
                },
                // Some services delete the monitor as soon as the task ends.
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    debug!(bmc = %self.address(), "task monitor gone; assuming the task ended");
                    return Ok(());
                }
                _ => return Err(self.http.status_error(&r, "GET task monitor")),
            }
            let wait = r.retry_after.unwrap_or(delay).max(delay);
            if tokio::time::Instant::now() + wait > deadline {
                return Err(PowerError::Timeout {
                    address: self.address().to_string(),
                    after: self.options.poll_timeout,
                });
            }
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn do_set_boot(&self, boot: BootOverride) -> Result<(), PowerError> {
        let d = self.discover().await?;
        let (target, enabled) = override_values(boot);
        let mode = boot.mode.map(|m| match m {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        });
        let mut reread = false;
        loop {
            // After a 412/428 the remembered document is the one that
            // failed: read again.
            let sys = if reread {
                self.read_system(d).await?
            } else {
                self.system_for_step(d, true).await?
            };
            let patch = boot_patch(&sys.body, target, enabled, mode, d.quirks.boot_mode)
                .map_err(|what| self.not_supported(&what))?;
            let etag = match d.quirks.if_match {
                IfMatchPolicy::WhenAdvertised => sys.etag.clone(),
                IfMatchPolicy::Never => None,
            };
            let sent = self
                .http
                .send(Method::PATCH, &d.system, Some(&patch), etag.as_deref())
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    // No answer: the PATCH may or may not have landed.
                    self.forget_system();
                    return Err(e);
                }
            };
            if r.status.is_success() {
                self.boot_written();
            } else {
                // Refused: the document (its ETag above all) did not match
                // the BMC, or the BMC is in a state we did not expect.
                self.forget_system();
            }
            match r.status {
                s if s.is_success() => {
                    debug!(bmc = %self.address(), target, enabled, "boot override set");
                    self.await_task_of(&r).await?;
                    return Ok(());
                }
                // Changed since we read it (412), or an ETag is demanded
                // (428): read again and retry once with the fresh ETag.
                StatusCode::PRECONDITION_FAILED | StatusCode::PRECONDITION_REQUIRED
                    if !reread && d.quirks.if_match == IfMatchPolicy::WhenAdvertised =>
                {
                    debug!(bmc = %self.address(), status = r.status.as_u16(), "precondition failed; re-reading");
                    reread = true;
                }
                s if s.is_client_error()
                    && !matches!(
                        s,
                        StatusCode::PRECONDITION_FAILED | StatusCode::PRECONDITION_REQUIRED
                    )
                    && d.quirks.boot_via_settings_object =>
                {
                    match settings_object(&sys.body) {
                        Some(settings) => return self.patch_settings(&settings, &patch).await,
                        None => {
                            return Err(self
                                .http
                                .status_error(&r, &format!("PATCH {} Boot", d.system)));
                        }
                    }
                }
                _ => {
                    return Err(self
                        .http
                        .status_error(&r, &format!("PATCH {} Boot", d.system)));
                }
            }
        }
    }

    /// A boot override and power on in two requests, without reading the
    /// system first, when a document read earlier (at enrolment, by the
    /// poller, by an earlier action: any age) tells the system's layout.
    /// What the two steps need from it does not change while the service
    /// runs: where the Reset action is and which types it takes, which boot
    /// targets it offers. Only the state changes, and neither step depends
    /// on it: `On` of a machine that is on is either a no-op or refused.
    /// Whatever the BMC refuses is done again the careful way, from a fresh
    /// read (`do_set_boot`, `do_power`), so a BMC that wants an ETag (428),
    /// refuses On-while-on (409) or moved its action answers correctly at
    /// the cost of one more round trip. Vendors whose boot PATCH depends on
    /// the current boot mode or goes to a settings object always take the
    /// careful way.
    async fn do_set_boot_and_power_on(&self, boot: BootOverride) -> Result<(), PowerError> {
        let d = self.discover().await?;
        let remembered = self.cache().latest.clone();
        let quick = remembered.filter(|s| {
            // A fresh document costs the careful way nothing extra and
            // lets it skip an On the machine does not need.
            s.read_at.elapsed() >= self.options.system_cache_ttl
                && d.quirks.boot_mode == BootModePolicy::WhenRequested
                && !d.quirks.boot_via_settings_object
                && boot.mode.is_none()
        });
        let Some(sys) = quick else {
            self.do_set_boot(boot).await?;
            return self.do_power(PowerAction::On).await;
        };

        let (target, enabled) = override_values(boot);
        let patched = match boot_patch(&sys.body, target, enabled, None, d.quirks.boot_mode) {
            Ok(patch) => {
                let sent = self
                    .http
                    .send(Method::PATCH, &d.system, Some(&patch), None)
                    .await;
                match sent {
                    Err(e) => {
                        self.forget_system();
                        return Err(e);
                    }
                    Ok(r) if r.status.is_success() => {
                        self.boot_written();
                        self.await_task_of(&r).await?;
                        true
                    }
                    Ok(r) => {
                        debug!(bmc = %self.address(), status = r.status.as_u16(), "boot PATCH without a read refused; reading the system");
                        self.forget_system();
                        false
                    }
                }
            }
            // What the old document says the BMC cannot do: let a fresh
            // read say it (or find that it now can).
            Err(_) => false,
        };
        if !patched {
            self.do_set_boot(boot).await?;
        }

        let reset = self.reset_action(&sys.body).await?;
        let on = self.choose(&reset, d.quirks.power_on)?;
        let r = self.send_reset(&reset, &on).await?;
        if !r.status.is_success() {
            debug!(bmc = %self.address(), status = r.status.as_u16(), "On without a read refused; reading the system");
            return self.do_power(PowerAction::On).await;
        }
        self.reset_accepted(&r, &on).await
    }

    /// The same PATCH on the system's settings object (`@Redfish.Settings`).
    async fn patch_settings(&self, settings: &str, patch: &Value) -> Result<(), PowerError> {
        debug!(bmc = %self.address(), "Boot refused on the system; using its settings object");
        let current = self.get(settings).await?;
        let r = self
            .http
            .send(
                Method::PATCH,
                settings,
                Some(patch),
                current.etag.as_deref(),
            )
            .await?
            .ok(&self.http, &format!("PATCH {settings} Boot"))?;
        self.await_task_of(&r).await?;
        Ok(())
    }

    async fn do_inventory(&self) -> Result<Inventory, PowerError> {
        let d = self.discover().await?;
        let sys = self.read_system_keeping(d, Keep::All).await?.body.clone();
        let mut inv = Inventory {
            manufacturer: text(&sys, "Manufacturer"),
            model: text(&sys, "Model"),
            serial: text(&sys, "SerialNumber"),
            system_uuid: text(&sys, "UUID"),
            bios_version: text(&sys, "BiosVersion"),
            memory_bytes: sys
                .pointer("/MemorySummary/TotalSystemMemoryGiB")
                .and_then(Value::as_f64)
                .filter(|g| g.is_finite() && *g >= 0.0)
                .map(|g| (g * 1024.0 * 1024.0 * 1024.0).round() as u64),
            power_state: power_state_of(&sys),
            ..Inventory::default()
        };

        if let Some(path) = link(&sys, "Processors") {
            inv.cpus = self
                .optional("Processors", self.processors(&path).await)?
                .unwrap_or_default();
        }
        if inv.cpus.is_empty() {
            // Only the summary: one entry per socket, same model.
            let count = sys
                .pointer("/ProcessorSummary/Count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let model = sys
                .pointer("/ProcessorSummary/Model")
                .and_then(Value::as_str)
                .map(str::to_string);
            inv.cpus = (0..count.min(64))
                .map(|_| Cpu {
                    model: model.clone(),
                    ..Cpu::default()
                })
                .collect();
        }
        if let Some(path) = link(&sys, "EthernetInterfaces") {
            inv.nics = self
                .optional("EthernetInterfaces", self.nics(&path).await)?
                .unwrap_or_default();
        }
        if let Some(path) = link(&sys, "Storage") {
            inv.disks = self
                .optional("Storage", self.storage_drives(&path).await)?
                .unwrap_or_default();
        }
        if inv.disks.is_empty()
            && let Some(path) = link(&sys, "SimpleStorage")
        {
            inv.disks = self
                .optional("SimpleStorage", self.simple_storage(&path).await)?
                .unwrap_or_default();
        }
        if let Some(manager) = &d.manager
            && let Some(m) = self.optional("Manager", self.get(manager).await)?
        {
            inv.bmc_firmware = text(&m.body, "FirmwareVersion");
        }
        Ok(inv)
    }

    async fn processors(&self, path: &str) -> Result<Vec<Cpu>, PowerError> {
        let mut cpus = Vec::new();
        for member in self.members(path).await? {
            let Some(p) = self.optional("Processor", self.get(&member).await)? else {
                continue;
            };
            let p = p.body;
            let kind = p
                .get("ProcessorType")
                .and_then(Value::as_str)
                .unwrap_or("CPU");
            let absent = p.pointer("/Status/State").and_then(Value::as_str) == Some("Absent");
            if kind != "CPU" || absent {
                continue;
            }
            cpus.push(Cpu {
                model: text(&p, "Model"),
                cores: p
                    .get("TotalCores")
                    .and_then(Value::as_u64)
                    .map(|c| c as u32),
                threads: p
                    .get("TotalThreads")
                    .and_then(Value::as_u64)
                    .map(|t| t as u32),
            });
        }
        Ok(cpus)
    }

    async fn nics(&self, path: &str) -> Result<Vec<Nic>, PowerError> {
        let mut nics: Vec<Nic> = Vec::new();
        for member in self.members(path).await? {
            let Some(n) = self.optional("EthernetInterface", self.get(&member).await)? else {
                continue;
            };
            let n = n.body;
            let raw = text(&n, "MACAddress").or_else(|| text(&n, "PermanentMACAddress"));
            let Some(mac) = raw.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) else {
                debug!(bmc = %self.address(), interface = %member, "no usable MAC address; skipped");
                continue;
            };
            if nics.iter().any(|x| x.mac == mac) {
                continue;
            }
            nics.push(Nic {
                mac,
                name: text(&n, "Name").or_else(|| text(&n, "Id")),
            });
        }
        Ok(nics)
    }

    async fn storage_drives(&self, path: &str) -> Result<Vec<Disk>, PowerError> {
        let mut disks = Vec::new();
        for member in self.members(path).await? {
            let Some(s) = self.optional("Storage", self.get(&member).await)? else {
                continue;
            };
            let drives: Vec<String> = s
                .body
                .get("Drives")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(odata_id)
                .map(str::to_string)
                .collect();
            for drive in drives {
                let Some(dr) = self.optional("Drive", self.get(&drive).await)? else {
                    continue;
                };
                let dr = dr.body;
                if dr.pointer("/Status/State").and_then(Value::as_str) == Some("Absent") {
                    continue;
                }
                disks.push(Disk {
                    name: text(&dr, "Name").or_else(|| text(&dr, "Id")),
                    model: text(&dr, "Model"),
                    serial: text(&dr, "SerialNumber"),
                    size_bytes: bytes(dr.get("CapacityBytes")),
                });
            }
        }
        Ok(disks)
    }

    async fn simple_storage(&self, path: &str) -> Result<Vec<Disk>, PowerError> {
        let mut disks = Vec::new();
        for member in self.members(path).await? {
            let Some(s) = self.optional("SimpleStorage", self.get(&member).await)? else {
                continue;
            };
            for dev in s
                .body
                .get("Devices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if dev.pointer("/Status/State").and_then(Value::as_str) == Some("Absent") {
                    continue;
                }
                disks.push(Disk {
                    name: text(dev, "Name"),
                    model: text(dev, "Model"),
                    serial: None,
                    size_bytes: bytes(dev.get("CapacityBytes")),
                });
            }
        }
        Ok(disks)
    }

    fn not_supported(&self, what: &str) -> PowerError {
        PowerError::NotSupported {
            address: self.address().to_string(),
            what: self.http.scrub(what),
        }
    }
}

impl std::fmt::Debug for RedfishDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishDriver")
            .field("address", &self.address())
            .field("system_id", &self.options.system_id)
            .finish_non_exhaustive()
    }
}

impl PowerDriver for RedfishDriver {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, PowerError>> {
        Box::pin(self.read_power_state())
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(self.do_power(action))
    }

    fn set_boot(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(self.do_set_boot(boot))
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory, PowerError>> {
        Box::pin(self.do_inventory())
    }

    fn set_boot_and_power_on(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(self.do_set_boot_and_power_on(boot))
    }
}

impl Drop for RedfishDriver {
    fn drop(&mut self) {
        // A session left open occupies one of the BMC's few session slots
        // until it times out; close it without blocking the dropping thread.
        if let Some((client, url, token)) = self.http.take_session() {
            debug!(bmc = %self.address(), "closing the session of a dropped driver");
            http::delete_session_detached(client, url, token);
        }
    }
}

/// `BootSourceOverrideTarget` and `BootSourceOverrideEnabled` for `boot`.
fn override_values(boot: BootOverride) -> (&'static str, &'static str) {
    let target = match boot.device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
    };
    (target, if boot.once { "Once" } else { "Continuous" })
}

/// The PATCH body for a boot override, or what the BMC cannot do.
fn boot_patch(
    system: &Value,
    target: &str,
    enabled: &str,
    mode: Option<&str>,
    policy: BootModePolicy,
) -> Result<Value, String> {
    let boot = system.get("Boot").unwrap_or(&Value::Null);
    let offers = |key: &str, value: &str| -> Result<(), String> {
        match strings(boot.get(format!("{key}@Redfish.AllowableValues").as_str())) {
            Some(allowed) if !allowed.iter().any(|a| a == value) => {
                Err(format!("{key} {value} (it offers {})", allowed.join(", ")))
            }
            _ => Ok(()),
        }
    };
    offers("BootSourceOverrideTarget", target)?;
    offers("BootSourceOverrideEnabled", enabled)?;
    let current = boot.get("BootSourceOverrideMode").and_then(Value::as_str);
    let send_mode = match policy {
        BootModePolicy::WhenRequested => mode,
        BootModePolicy::AlwaysSend => mode.or(current),
        BootModePolicy::ReadOnly => match mode {
            Some(m) if current != Some(m) => {
                return Err(format!(
                    "setting BootSourceOverrideMode {m}: read-only on this BMC, the boot mode is a BIOS setting"
                ));
            }
            _ => None,
        },
    };
    let mut body = json!({
        "BootSourceOverrideTarget": target,
        "BootSourceOverrideEnabled": enabled,
    });
    if let Some(m) = send_mode {
        if current.is_none() && mode.is_some() {
            return Err("BootSourceOverrideMode (the BMC does not report it)".into());
        }
        offers("BootSourceOverrideMode", m)?;
        body["BootSourceOverrideMode"] = json!(m);
    }
    Ok(json!({ "Boot": body }))
}

/// The settings object of a resource (`@Redfish.Settings`), if advertised.
fn settings_object(resource: &Value) -> Option<String> {
    resource
        .pointer("/@Redfish.Settings/SettingsObject")
        .and_then(odata_id)
        .map(str::to_string)
}

/// `PoweringOn` counts as Off and `PoweringOff` as On until the transition
/// completes, so waiting for a state waits for the transition's end.
fn power_state_of(system: &Value) -> Option<PowerState> {
    match system.get("PowerState")?.as_str()? {
        "On" | "PoweringOff" | "Paused" => Some(PowerState::On),
        "Off" | "PoweringOn" => Some(PowerState::Off),
        _ => None,
    }
}

fn task_messages(task: &Value) -> String {
    let msgs: Vec<&str> = task
        .get("Messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("Message").and_then(Value::as_str))
        .collect();
    if msgs.is_empty() {
        String::new()
    } else {
        format!(": {}", msgs.join("; "))
    }
}

/// A non-empty string property.
fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The `@odata.id` of a navigation property.
fn link(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(odata_id).map(str::to_string)
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    Some(
        v?.as_array()?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
    )
}

fn bytes(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn last_segment(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(boot: Value) -> Value {
        json!({ "Boot": boot })
    }

    #[test]
    fn boot_patch_standard() {
        let sys = system(json!({"BootSourceOverrideMode": "UEFI"}));
        let p = boot_patch(&sys, "Pxe", "Once", None, BootModePolicy::WhenRequested).unwrap();
        assert_eq!(
            p,
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})
        );
        let p = boot_patch(
            &sys,
            "Hdd",
            "Continuous",
            Some("Legacy"),
            BootModePolicy::WhenRequested,
        )
        .unwrap();
        assert_eq!(p["Boot"]["BootSourceOverrideMode"], "Legacy");
    }

    #[test]
    fn boot_patch_supermicro_echoes_the_mode() {
        let sys = system(json!({"BootSourceOverrideMode": "UEFI"}));
        let p = boot_patch(&sys, "Pxe", "Once", None, BootModePolicy::AlwaysSend).unwrap();
        assert_eq!(p["Boot"]["BootSourceOverrideMode"], "UEFI");
    }

    #[test]
    fn boot_patch_hpe_never_writes_the_mode() {
        let sys = system(json!({"BootSourceOverrideMode": "UEFI"}));
        let p = boot_patch(&sys, "Pxe", "Once", Some("UEFI"), BootModePolicy::ReadOnly).unwrap();
        assert!(p["Boot"].get("BootSourceOverrideMode").is_none());
        let e = boot_patch(
            &sys,
            "Pxe",
            "Once",
            Some("Legacy"),
            BootModePolicy::ReadOnly,
        );
        assert!(e.unwrap_err().contains("read-only"));
    }

    #[test]
    fn boot_patch_checks_allowable_values() {
        let sys = system(json!({
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd"],
            "BootSourceOverrideMode@Redfish.AllowableValues": ["UEFI"],
            "BootSourceOverrideMode": "UEFI",
        }));
        assert!(boot_patch(&sys, "Hdd", "Once", None, BootModePolicy::WhenRequested).is_err());
        assert!(
            boot_patch(
                &sys,
                "Pxe",
                "Once",
                Some("Legacy"),
                BootModePolicy::WhenRequested
            )
            .is_err()
        );
        // A mode the BMC does not report cannot be set.
        let bare = system(json!({}));
        assert!(
            boot_patch(
                &bare,
                "Pxe",
                "Once",
                Some("UEFI"),
                BootModePolicy::WhenRequested
            )
            .is_err()
        );
        assert!(boot_patch(&bare, "Pxe", "Once", None, BootModePolicy::AlwaysSend).is_ok());
    }

    #[test]
    fn transitional_power_states() {
        let s = |p: &str| power_state_of(&json!({ "PowerState": p }));
        assert_eq!(s("On"), Some(PowerState::On));
        assert_eq!(s("PoweringOff"), Some(PowerState::On));
        assert_eq!(s("Off"), Some(PowerState::Off));
        assert_eq!(s("PoweringOn"), Some(PowerState::Off));
        assert_eq!(s("Unknown"), None);
        assert_eq!(power_state_of(&json!({})), None);
    }

    #[test]
    fn helpers() {
        assert_eq!(last_segment("/redfish/v1/Systems/1/"), "1");
        assert_eq!(bytes(Some(&json!(1.5e12))), Some(1_500_000_000_000));
        assert_eq!(bytes(Some(&json!(-1))), None);
        assert_eq!(
            settings_object(&json!({"@Redfish.Settings": {"SettingsObject": {"@odata.id": "/s"}}})),
            Some("/s".into())
        );
    }

    #[test]
    fn options_and_config_errors() {
        let creds = BmcCredentials {
            address: "127.0.0.1".into(),
            port: Some(1),
            username: Some("u".into()),
            password: Some("p".into()),
            verify_tls: true,
            ca_pem: Some("not a pem".into()),
        };
        let e = RedfishDriver::new(creds.clone(), RedfishOptions::default())
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("CA")));
        let e = RedfishDriver::new(
            BmcCredentials {
                ca_pem: None,
                ..creds
            },
            RedfishOptions {
                timeout: Duration::ZERO,
                ..RedfishOptions::default()
            },
        );
        assert!(matches!(e, Err(PowerError::Config(_))));
    }
}
