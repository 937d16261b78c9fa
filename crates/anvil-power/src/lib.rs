//! The power-driver seam.
//!
//! Every BMC protocol (Redfish in `anvil-power-redfish`, IPMI in
//! `anvil-power-ipmi`) implements `PowerDriver`; the application layer
//! knows only this trait. `FakeBmc` is the in-memory implementation for
//! tests of everything above the drivers.
//!
//! Secrets: `BmcCredentials` holds the BMC password in clear for the
//! duration of a call. Its `Debug` hides it, and no error variant carries it:
//! drivers must never put a password (or a URL containing one) into an
//! error, a log line or a result.

use anvil_types::MacAddr;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to reach and log in to a BMC.
#[derive(Clone, PartialEq)]
pub struct BmcCredentials {
    /// Host name or IP address.
    pub address: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Verify the BMC's TLS certificate (Redfish). On by default.
    pub verify_tls: bool,
    /// A CA (PEM) to trust instead of the system roots, for BMCs with
    /// certificates from a private CA.
    pub ca_pem: Option<String>,
}

impl fmt::Debug for BmcCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcCredentials")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Legacy,
}

/// The next boot device, once or for every boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootOverride {
    pub device: BootDevice,
    pub once: bool,
    /// `None` leaves the firmware's mode alone.
    pub mode: Option<BootMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    /// Immediate, like pulling the plug.
    ForceOff,
    /// Ask the operating system to shut down (ACPI).
    SoftOff,
    /// Immediate reset.
    Reset,
    /// Off, then on.
    Cycle,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub model: Option<String>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: MacAddr,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub name: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: Option<u64>,
}

/// What a BMC can tell about its machine without booting it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub system_uuid: Option<String>,
    pub bios_version: Option<String>,
    pub bmc_firmware: Option<String>,
    pub cpus: Vec<Cpu>,
    pub memory_bytes: Option<u64>,
    pub nics: Vec<Nic>,
    pub disks: Vec<Disk>,
    pub power_state: Option<PowerState>,
}

/// Why a BMC call failed. No variant may carry a password.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("cannot reach the BMC at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the BMC at {address} refused the credentials")]
    AuthFailed { address: String },
    #[error("TLS with the BMC at {address} failed: {reason}")]
    Tls { address: String, reason: String },
    #[error("the BMC at {address} did not answer within {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("the BMC at {address} does not support {what}")]
    NotSupported { address: String, what: String },
    #[error("the BMC at {address} answered unexpectedly: {detail}")]
    Protocol { address: String, detail: String },
    /// The action was accepted but the state was not reached in time.
    #[error("the BMC at {address} did not reach power {wanted:?} within {after:?}")]
    NotConverged {
        address: String,
        wanted: PowerState,
        after: Duration,
    },
    #[error("invalid BMC configuration: {0}")]
    Config(String),
}

/// One BMC protocol. Implementations are cheap to call repeatedly and keep
/// any session they need between calls.
pub trait PowerDriver: Send + Sync {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, PowerError>>;
    /// Performs `action`; returns once the BMC accepted it. Use
    /// `wait_for_state` to know it took effect.
    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>>;
    fn set_boot(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>>;
    fn inventory(&self) -> BoxFuture<'_, Result<Inventory, PowerError>>;
    /// Sets `boot` and powers the machine on; a machine already on keeps
    /// running and uses the override at its next boot. Returns once the BMC
    /// accepted both. The default is `set_boot` then `power(On)`; a driver
    /// may need fewer round trips (Redfish: no read first when it already
    /// knows the system's layout).
    fn set_boot_and_power_on(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            self.set_boot(boot).await?;
            self.power(PowerAction::On).await
        })
    }
}

/// When to read the power state while waiting for a change the BMC
/// accepted. BMCs apply power changes seconds later (sushy-tools 1-11 s,
/// servers typically 1-10 s): reads before the first second almost never
/// see the change and cost a request each (a new TCP connection on BMCs
/// that close every connection), while reading every second finds the
/// change about half a second after it happened.
///
/// The pause is counted from the previous answer, not on a fixed grid: a
/// BMC (or a concurrency limit) that answers slowly is read less often, so
/// many waiting machines back off by themselves instead of piling reads on
/// the busy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    /// From the acceptance to the first read.
    pub first: Duration,
    /// From an answer that did not show the change to the next read.
    pub every: Duration,
}

impl PollSchedule {
    /// One second after the acceptance, then one second after each answer.
    pub const STEADY: PollSchedule = PollSchedule {
        first: Duration::from_secs(1),
        every: Duration::from_secs(1),
    };

    /// The pause before the next read, after `reads` reads.
    pub fn pause(&self, reads: u32) -> Duration {
        if reads == 0 { self.first } else { self.every }
    }
}

/// Polls `power_state` on [`PollSchedule::STEADY`] until it equals
/// `wanted`, for at most `timeout` (counted from the call, which should
/// follow the BMC's acceptance of the request). Stops at the first read
/// that shows `wanted`.
pub async fn wait_for_state(
    driver: &dyn PowerDriver,
    address: &str,
    wanted: PowerState,
    timeout: Duration,
) -> Result<(), PowerError> {
    wait_for_state_with(driver, address, wanted, timeout, PollSchedule::STEADY).await
}

/// [`wait_for_state`] with another schedule.
pub async fn wait_for_state_with(
    driver: &dyn PowerDriver,
    address: &str,
    wanted: PowerState,
    timeout: Duration,
    schedule: PollSchedule,
) -> Result<(), PowerError> {
    let accepted = tokio::time::Instant::now();
    let mut reads = 0;
    loop {
        let pause = schedule.pause(reads);
        if accepted.elapsed() + pause > timeout {
            return Err(PowerError::NotConverged {
                address: address.to_string(),
                wanted,
                after: timeout,
            });
        }
        tokio::time::sleep(pause).await;
        reads += 1;
        if driver.power_state().await? == wanted {
            return Ok(());
        }
    }
}

/// An in-memory BMC for tests of the layers above the drivers. Power changes
/// apply after `delay`, as real BMCs do.
#[derive(Clone, Default)]
pub struct FakeBmc {
    inner: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    on: bool,
    /// Uses tokio's clock, so tests with paused time see changes apply.
    pending: Option<(bool, tokio::time::Instant)>,
    boot: Option<BootOverride>,
    inventory: Inventory,
    delay: Duration,
    fail: Option<String>,
    calls: Vec<String>,
}

impl FakeBmc {
    pub fn new(inventory: Inventory, delay: Duration) -> Self {
        let bmc = FakeBmc::default();
        if let Ok(mut s) = bmc.inner.lock() {
            s.inventory = inventory;
            s.delay = delay;
        }
        bmc
    }

    /// Makes every later call fail with a protocol error (a broken BMC).
    pub fn fail_with(&self, detail: &str) {
        if let Ok(mut s) = self.inner.lock() {
            s.fail = Some(detail.to_string());
        }
    }

    pub fn boot_override(&self) -> Option<BootOverride> {
        self.inner.lock().ok().and_then(|s| s.boot)
    }

    /// The calls made so far, e.g. `["set_boot Pxe once", "power On"]`.
    pub fn calls(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    fn with<T>(&self, call: String, f: impl FnOnce(&mut FakeState) -> T) -> Result<T, PowerError> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| PowerError::Config("fake BMC poisoned".into()))?;
        s.calls.push(call);
        if let Some(detail) = &s.fail {
            return Err(PowerError::Protocol {
                address: "fake".into(),
                detail: detail.clone(),
            });
        }
        if let Some((on, at)) = s.pending
            && at <= tokio::time::Instant::now()
        {
            s.on = on;
            s.pending = None;
        }
        Ok(f(&mut s))
    }
}

impl PowerDriver for FakeBmc {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, PowerError>> {
        let r = self.with("power_state".into(), |s| {
            if s.on {
                PowerState::On
            } else {
                PowerState::Off
            }
        });
        Box::pin(async move { r })
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        let r = self.with(format!("power {action:?}"), |s| {
            let target = !matches!(action, PowerAction::ForceOff | PowerAction::SoftOff);
            s.pending = Some((target, tokio::time::Instant::now() + s.delay));
        });
        Box::pin(async move { r })
    }

    fn set_boot(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        let r = self.with(
            format!(
                "set_boot {:?}{}",
                boot.device,
                if boot.once { " once" } else { "" }
            ),
            |s| s.boot = Some(boot),
        );
        Box::pin(async move { r })
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory, PowerError>> {
        let r = self.with("inventory".into(), |s| s.inventory.clone());
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = BmcCredentials {
            address: "10.0.0.1".into(),
            port: None,
            username: Some("root".into()),
            password: Some("calvin".into()),
            verify_tls: true,
            ca_pem: None,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("calvin"), "{s}");
        assert!(s.contains("***"));
    }

    #[tokio::test]
    async fn fake_bmc_applies_power_changes_late_and_waiting_converges() {
        let bmc = FakeBmc::new(Inventory::default(), Duration::from_millis(300));
        bmc.set_boot(BootOverride {
            device: BootDevice::Pxe,
            once: true,
            mode: None,
        })
        .await
        .unwrap();
        bmc.power(PowerAction::On).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "not yet");
        wait_for_state(&bmc, "fake", PowerState::On, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            bmc.calls()[..2],
            ["set_boot Pxe once".to_string(), "power On".to_string()]
        );
        bmc.power(PowerAction::ForceOff).await.unwrap();
        let e = wait_for_state(&bmc, "fake", PowerState::Off, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, PowerError::NotConverged { .. }), "{e}");
        bmc.fail_with("boom");
        assert!(bmc.power_state().await.is_err());
    }

    #[test]
    fn poll_schedule_waits_a_second_first_and_between_reads() {
        let s = PollSchedule::STEADY;
        assert_eq!(s.pause(0), Duration::from_secs(1));
        assert_eq!(s.pause(1), Duration::from_secs(1));
        assert_eq!(s.pause(7), Duration::from_secs(1));
        let quick = PollSchedule {
            first: Duration::ZERO,
            every: Duration::from_millis(300),
        };
        assert_eq!(quick.pause(0), Duration::ZERO);
        assert_eq!(quick.pause(1), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_reads_once_a_second_and_stops_at_the_first_match() {
        let bmc = FakeBmc::new(Inventory::default(), Duration::from_millis(3500));
        bmc.power(PowerAction::On).await.unwrap();
        let t0 = tokio::time::Instant::now();
        wait_for_state(&bmc, "fake", PowerState::On, Duration::from_secs(30))
            .await
            .unwrap();
        let reads = bmc.calls().iter().filter(|c| *c == "power_state").count();
        // Reads at 1, 2, 3 (still off) and 4 s (on): four, none after.
        assert_eq!(reads, 4, "{:?}", bmc.calls());
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
        // A change that comes too late (3.5 s, timeout 2.5 s): reads at 1
        // and 2 s, then gives up without sleeping past the timeout.
        bmc.power(PowerAction::ForceOff).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let e = wait_for_state(&bmc, "fake", PowerState::Off, Duration::from_millis(2500))
            .await
            .unwrap_err();
        assert!(matches!(e, PowerError::NotConverged { .. }), "{e}");
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }
}
