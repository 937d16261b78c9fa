//! `IpmiDriver`: the native RMCP+ driver. One session per BMC, kept open
//! between calls and re-established when it stops answering.

use crate::commands::{self, DeviceId, FruInfo};
use crate::crypto::Secret;
use crate::session::{self, Fail, Login, Retry, Session, Suite};
use crate::{Privilege, completion_text};
use anvil_power::{
    BmcCredentials, BootOverride, Inventory, PowerAction, PowerDriver, PowerError, PowerState,
};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Tuning of `IpmiDriver`. `Default` suits BMCs on a management LAN.
#[derive(Debug, Clone)]
pub struct IpmiOptions {
    /// Cipher suites to propose, in order; the first the BMC accepts is
    /// used, and remembered for the next sessions. Only 17
    /// (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128) and 3
    /// (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) are accepted:
    /// `IpmiDriver::new` refuses 0 and every suite without integrity,
    /// and there is no fallback to them whatever the BMC offers.
    /// Default `[17, 3]`: SHA-256 where the BMC has it, else suite 3, the
    /// one every IPMI v2.0 BMC implements. Without Get Channel Cipher
    /// Suites (which many BMCs, ipmi_sim included, do not answer) the way
    /// to learn whether a BMC offers 17 is to propose it: a refusal costs
    /// one round trip, once per driver.
    pub cipher_suites: Vec<u8>,
    /// Privilege requested in RAKP 1 and set with Set Session Privilege
    /// Level. Chassis Control and Set System Boot Options need OPERATOR;
    /// default ADMINISTRATOR, what most BMC accounts are.
    pub privilege: Privilege,
    /// Upper bound of one trait call (a power state, an action, one part
    /// of the inventory), session set-up and retransmissions included.
    pub call_timeout: Duration,
    /// First wait for an answer before retransmitting; doubles each time.
    pub retry_initial: Duration,
    /// Longest wait between retransmissions.
    pub retry_max: Duration,
    /// A session unused this long is re-established instead of reused:
    /// BMCs drop idle sessions and silently ignore packets for them, which
    /// would cost two retransmission timeouts to discover. ipmi_sim drops
    /// them after about 30 s (measured), many BMCs after 60 s (the IPMI
    /// default); a new login costs five round trips.
    pub session_idle_limit: Duration,
}

impl Default for IpmiOptions {
    fn default() -> Self {
        IpmiOptions {
            cipher_suites: vec![17, 3],
            privilege: Privilege::Administrator,
            call_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(1000),
            retry_max: Duration::from_secs(4),
            session_idle_limit: Duration::from_secs(25),
        }
    }
}

/// Native IPMI v2.0 (RMCP+, "lanplus") `PowerDriver`.
///
/// Calls on one driver are serialised (one session, one request at a
/// time, as most BMCs expect); use one driver per BMC and run drivers
/// concurrently. Dropping the driver inside a tokio runtime closes the
/// session in the background; `close` does it and waits.
pub struct IpmiDriver {
    host: String,
    port: u16,
    /// "host" or "host:port", for errors and logs. Never holds secrets.
    label: String,
    username: Vec<u8>,
    password: Secret,
    privilege: u8,
    suites: Vec<Suite>,
    opts: IpmiOptions,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// The suite the BMC accepted last time: tried first on reconnect.
    accepted: Option<Suite>,
}

impl std::fmt::Debug for IpmiDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiDriver")
            .field("address", &self.label)
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"***")
            .field("cipher_suites", &self.opts.cipher_suites)
            .finish()
    }
}

impl IpmiDriver {
    /// Checks the configuration; does not touch the network (the first
    /// call opens the session).
    pub fn new(creds: &BmcCredentials, opts: IpmiOptions) -> Result<IpmiDriver, PowerError> {
        let (host, port, label) = crate::target(creds)?;
        let (username, password) = crate::login_bytes(creds)?;
        if opts.cipher_suites.is_empty() {
            return Err(PowerError::Config(
                "no IPMI cipher suite configured (use 17 and/or 3)".into(),
            ));
        }
        let suites = opts
            .cipher_suites
            .iter()
            .map(|&id| session::suite_by_id(id).map_err(PowerError::Config))
            .collect::<Result<Vec<_>, _>>()?;
        if opts.call_timeout.is_zero() || opts.retry_initial.is_zero() {
            return Err(PowerError::Config(
                "IPMI call timeout and retry interval must be positive".into(),
            ));
        }
        Ok(IpmiDriver {
            host,
            port,
            label,
            username,
            password,
            privilege: opts.privilege.level(),
            suites,
            opts,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// "host" or "host:port" as used in errors.
    pub fn address(&self) -> &str {
        &self.label
    }

    /// The cipher suite of the open session, if one is open.
    pub async fn cipher_suite(&self) -> Option<u8> {
        self.state.lock().await.session.as_ref().map(|s| s.suite.id)
    }

    /// Closes the session (Close Session, best effort). The next call
    /// opens a new one.
    pub async fn close(&self) {
        let session = self.state.lock().await.session.take();
        if let Some(s) = session {
            s.close().await;
        }
    }

    /// Sends any IPMI request on the driver's session and returns the
    /// response data after a zero completion code: for vendor (OEM)
    /// commands this crate does not wrap.
    pub async fn raw(&self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, PowerError> {
        self.call(netfn, cmd, data).await
    }

    /// Get Device ID: firmware revision, IPMI version, manufacturer and
    /// product IDs.
    pub async fn device_id(&self) -> Result<DeviceId, PowerError> {
        let d = self
            .call(commands::NETFN_APP, commands::CMD_GET_DEVICE_ID, &[])
            .await?;
        DeviceId::parse(&d).map_err(|detail| self.protocol(detail))
    }

    /// Get System GUID as an RFC 4122 string; `None` when the BMC has no
    /// GUID command.
    pub async fn system_guid(&self) -> Result<Option<String>, PowerError> {
        match self
            .call_raw(commands::NETFN_APP, commands::CMD_GET_SYSTEM_GUID, &[])
            .await
        {
            Ok(d) => {
                let g: [u8; 16] = d
                    .get(..16)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| self.protocol("Get System GUID response too short".into()))?;
                Ok(Some(commands::format_guid(&g)))
            }
            Err(Fail::Completion { .. }) => Ok(None),
            Err(f) => Err(self.error(f)),
        }
    }

    /// The FRU inventory of FRU device 0 (the system board): `None` when
    /// the BMC has none (e.g. completion code 0xCB "not present").
    pub async fn fru(&self) -> Result<Option<FruInfo>, PowerError> {
        let info = match self
            .call_raw(
                commands::NETFN_STORAGE,
                commands::CMD_GET_FRU_AREA_INFO,
                &[0],
            )
            .await
        {
            Ok(d) => d,
            Err(Fail::Completion { .. }) => return Ok(None),
            Err(f) => return Err(self.error(f)),
        };
        if info.len() < 3 {
            return Err(self.protocol("Get FRU Inventory Area Info response too short".into()));
        }
        // FRU images are a few hundred bytes; 4 KiB bounds a confused BMC.
        let size = usize::from(u16::from_le_bytes([info[0], info[1]])).min(4096);
        let words = info[2] & 0x01 != 0;
        let mut image = Vec::with_capacity(size);
        // 16 bytes per read fits every BMC's message size limit.
        while image.len() < size {
            let want = (size - image.len()).min(16);
            let (off, count) = if words {
                (image.len() / 2, want.div_ceil(2))
            } else {
                (image.len(), want)
            };
            let off = u16::try_from(off).unwrap_or(u16::MAX).to_le_bytes();
            let d = match self
                .call_raw(
                    commands::NETFN_STORAGE,
                    commands::CMD_READ_FRU_DATA,
                    &[0, off[0], off[1], count as u8],
                )
                .await
            {
                Ok(d) => d,
                Err(Fail::Completion { .. }) => break,
                Err(f) => return Err(self.error(f)),
            };
            let got = d.get(1..).unwrap_or(&[]);
            if got.is_empty() {
                break;
            }
            image.extend_from_slice(got);
        }
        match FruInfo::parse(&image) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                tracing::debug!(bmc = %self.label, "FRU 0 unreadable: {e}");
                Ok(None)
            }
        }
    }

    async fn call(&self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, PowerError> {
        self.call_raw(netfn, cmd, data)
            .await
            .map_err(|f| self.error(f))
    }

    /// One request under the call deadline: reuses the session, and if a
    /// reused session stays silent, re-establishes it once and retries.
    async fn call_raw(&self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, Fail> {
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut st = tokio::time::timeout_at(deadline, self.state.lock())
            .await
            .map_err(|_| Fail::Timeout)?;
        let retry = Retry {
            initial: self.opts.retry_initial,
            max: self.opts.retry_max.max(self.opts.retry_initial),
        };
        if st
            .session
            .as_ref()
            .is_some_and(|s| s.last_used.elapsed() > self.opts.session_idle_limit)
            && let Some(old) = st.session.take()
        {
            // The BMC may still hold it (its timeout may be longer than
            // ours): give the slot back, without waiting for the answer.
            tokio::spawn(old.close());
        }
        let mut reused = st.session.is_some();
        loop {
            let mut session = match st.session.take() {
                Some(s) => s,
                None => {
                    let s = self.open(st.accepted, deadline, retry).await?;
                    st.accepted = Some(s.suite);
                    s
                }
            };
            // On a reused session, two unanswered sends are enough to
            // suspect the BMC forgot it (reboot, timeout, another client
            // taking the slot); a fresh session gets the whole deadline.
            let sends = if reused { 2 } else { u32::MAX };
            let r = session
                .command(netfn, cmd, data, deadline, retry, sends)
                .await;
            match r {
                Err(Fail::Timeout) if reused && Instant::now() < deadline => {
                    tracing::debug!(bmc = %self.label, "kept session silent; re-establishing");
                    reused = false;
                }
                // The session itself is fine after a completion code.
                Ok(_) | Err(Fail::Completion { .. }) => {
                    st.session = Some(session);
                    return r;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open(
        &self,
        accepted: Option<Suite>,
        deadline: Instant,
        retry: Retry,
    ) -> Result<Session, Fail> {
        let addr = self.resolve().await?;
        // The suite that worked last time first, then the configured order.
        let mut suites: Vec<Suite> = accepted.into_iter().collect();
        suites.extend(self.suites.iter().filter(|s| Some(**s) != accepted));
        let login = Login {
            username: &self.username,
            password: &self.password,
            privilege: self.privilege,
        };
        let s = Session::open(addr, &login, &suites, deadline, retry).await?;
        tracing::debug!(bmc = %self.label, suite = s.suite.id, "IPMI session established");
        Ok(s)
    }

    async fn resolve(&self) -> Result<SocketAddr, Fail> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Fail::Unreachable(format!("cannot resolve the host name: {e}")))?;
        addrs
            .next()
            .ok_or_else(|| Fail::Unreachable("the host name has no address".into()))
    }

    fn protocol(&self, detail: String) -> PowerError {
        PowerError::Protocol {
            address: self.label.clone(),
            detail,
        }
    }

    fn error(&self, f: Fail) -> PowerError {
        let address = self.label.clone();
        match f {
            Fail::Timeout => PowerError::Timeout {
                address,
                after: self.opts.call_timeout,
            },
            Fail::Unreachable(reason) => PowerError::Unreachable { address, reason },
            Fail::Auth => PowerError::AuthFailed { address },
            Fail::NotSupported(what) => PowerError::NotSupported { address, what },
            Fail::Protocol(detail) => PowerError::Protocol { address, detail },
            Fail::Completion { netfn, cmd, code } => {
                let what = command_name(netfn, cmd);
                if code == 0xC1 {
                    PowerError::NotSupported {
                        address,
                        what: format!("{what} (completion code 0xC1: invalid command)"),
                    }
                } else {
                    PowerError::Protocol {
                        address,
                        detail: format!(
                            "{what} failed: completion code 0x{code:02X} ({})",
                            completion_text(code)
                        ),
                    }
                }
            }
        }
    }

    async fn power_state_impl(&self) -> Result<PowerState, PowerError> {
        let d = self
            .call(
                commands::NETFN_CHASSIS,
                commands::CMD_GET_CHASSIS_STATUS,
                &[],
            )
            .await?;
        let b = d
            .first()
            .ok_or_else(|| self.protocol("empty Get Chassis Status response".into()))?;
        Ok(if b & 0x01 != 0 {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn set_boot_impl(&self, boot: BootOverride) -> Result<(), PowerError> {
        let current_efi = if boot.mode.is_none() {
            match self
                .call_raw(
                    commands::NETFN_CHASSIS,
                    commands::CMD_GET_BOOT_OPTIONS,
                    &[0x05, 0x00, 0x00],
                )
                .await
            {
                Ok(d) => commands::boot_flags_efi(&d).unwrap_or(false),
                Err(Fail::Completion { .. }) => false,
                Err(f) => return Err(self.error(f)),
            }
        } else {
            false
        };
        let req = commands::boot_flags_request(boot, current_efi);
        self.call(
            commands::NETFN_CHASSIS,
            commands::CMD_SET_BOOT_OPTIONS,
            &req,
        )
        .await?;
        Ok(())
    }

    async fn inventory_impl(&self) -> Result<Inventory, PowerError> {
        let id = self.device_id().await?;
        let mut inv = Inventory {
            bmc_firmware: Some(id.firmware.clone()),
            system_uuid: self.system_guid().await?,
            ..Inventory::default()
        };
        if id.has_fru()
            && let Some(fru) = self.fru().await?
        {
            inv.manufacturer = fru.product_manufacturer.or(fru.board_manufacturer);
            inv.model = fru.product_name.or(fru.board_product);
            inv.serial = fru
                .product_serial
                .or(fru.chassis_serial)
                .or(fru.board_serial);
        }
        inv.power_state = Some(self.power_state_impl().await?);
        Ok(inv)
    }
}

fn command_name(netfn: u8, cmd: u8) -> String {
    let name = match (netfn, cmd) {
        (0x00, 0x01) => "Get Chassis Status",
        (0x00, 0x02) => "Chassis Control",
        (0x00, 0x08) => "Set System Boot Options",
        (0x00, 0x09) => "Get System Boot Options",
        (0x06, 0x01) => "Get Device ID",
        (0x06, 0x37) => "Get System GUID",
        (0x06, 0x3B) => "Set Session Privilege Level",
        (0x0A, 0x10) => "Get FRU Inventory Area Info",
        (0x0A, 0x11) => "Read FRU Data",
        _ => "",
    };
    if name.is_empty() {
        format!("IPMI command NetFn 0x{netfn:02X} Cmd 0x{cmd:02X}")
    } else {
        name.to_string()
    }
}

impl Drop for IpmiDriver {
    fn drop(&mut self) {
        // Give the BMC its session slot back without blocking the drop.
        if let Some(s) = self.state.get_mut().session.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(s.close());
        }
    }
}

impl PowerDriver for IpmiDriver {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, PowerError>> {
        Box::pin(self.power_state_impl())
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let b = commands::chassis_control_byte(action);
            self.call(commands::NETFN_CHASSIS, commands::CMD_CHASSIS_CONTROL, &[b])
                .await
                .map(|_| ())
        })
    }

    fn set_boot(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(self.set_boot_impl(boot))
    }

    /// Get Device ID (BMC firmware), Get System GUID (system UUID), FRU 0
    /// (manufacturer, model, serial) and Get Chassis Status (power state).
    /// IPMI over LAN has nothing standard for CPUs, memory, NICs or disks:
    /// those stay empty, as do fields the BMC does not have; use Redfish or
    /// an in-band agent for them.
    fn inventory(&self) -> BoxFuture<'_, Result<Inventory, PowerError>> {
        Box::pin(self.inventory_impl())
    }
}
