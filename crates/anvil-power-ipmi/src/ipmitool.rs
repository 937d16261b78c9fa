//! `IpmitoolDriver`: the fallback that runs `ipmitool -I lanplus` per call.

use crate::commands::{self, DeviceId, FruInfo};
use crate::{Privilege, session};
use anvil_power::{
    BmcCredentials, BootOverride, Inventory, PowerAction, PowerDriver, PowerError, PowerState,
};
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use zeroize::Zeroizing;

/// Tuning of `IpmitoolDriver`.
#[derive(Debug, Clone)]
pub struct IpmitoolOptions {
    /// The ipmitool binary; found on `PATH` by default.
    pub program: PathBuf,
    /// `-C`: 3 (default: every IPMI v2.0 BMC has it) or 17. Suite 0 and
    /// suites without integrity are refused, as in the native driver.
    pub cipher_suite: u8,
    /// `-L`.
    pub privilege: Privilege,
    /// Bound of one call: the ipmitool process is killed after it.
    pub call_timeout: Duration,
}

impl Default for IpmitoolOptions {
    fn default() -> Self {
        IpmitoolOptions {
            program: PathBuf::from("ipmitool"),
            cipher_suite: 3,
            privilege: Privilege::Administrator,
            call_timeout: Duration::from_secs(20),
        }
    }
}

/// `PowerDriver` that shells out to `ipmitool` (Debian package `ipmitool`).
/// The password reaches ipmitool through its environment (`-E` reads
/// `IPMI_PASSWORD`): `/proc/<pid>/environ` is readable only by the same
/// user, whereas the command line is visible to everyone through `ps`.
pub struct IpmitoolDriver {
    host: String,
    port: u16,
    label: String,
    username: Option<String>,
    password: Zeroizing<String>,
    opts: IpmitoolOptions,
}

impl std::fmt::Debug for IpmitoolDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmitoolDriver")
            .field("address", &self.label)
            .field("username", &self.username)
            .field("password", &"***")
            .field("program", &self.opts.program)
            .field("cipher_suite", &self.opts.cipher_suite)
            .finish()
    }
}

impl IpmitoolDriver {
    pub fn new(
        creds: &BmcCredentials,
        opts: IpmitoolOptions,
    ) -> Result<IpmitoolDriver, PowerError> {
        let (host, port, label) = crate::target(creds)?;
        // Same limits as the native driver (and as ipmitool itself).
        crate::login_bytes(creds)?;
        session::suite_by_id(opts.cipher_suite).map_err(PowerError::Config)?;
        if host.starts_with('-') {
            return Err(PowerError::Config(
                "the BMC address must not start with '-'".into(),
            ));
        }
        Ok(IpmitoolDriver {
            host,
            port,
            label,
            username: creds.username.clone().filter(|u| !u.is_empty()),
            password: Zeroizing::new(creds.password.clone().unwrap_or_default()),
            opts,
        })
    }

    pub fn address(&self) -> &str {
        &self.label
    }

    /// Runs `ipmitool <connection options> <args>` and returns stdout.
    async fn run(&self, args: &[&str]) -> Result<String, PowerError> {
        let mut cmd = tokio::process::Command::new(&self.opts.program);
        cmd.args(["-I", "lanplus", "-H", &self.host])
            .args(["-p", &self.port.to_string()])
            .args(["-C", &self.opts.cipher_suite.to_string()])
            .args(["-L", self.opts.privilege.ipmitool_name()])
            // ipmitool's own retransmission: 1 s timeout, 3 retries; the
            // outer call timeout still bounds the whole process.
            .args(["-N", "1", "-R", "3"])
            // -v makes ipmitool say *why* a login failed (e.g. "RAKP 2
            // HMAC is invalid"), which tells AuthFailed from the rest.
            .arg("-v");
        if let Some(u) = &self.username {
            cmd.args(["-U", u]);
        }
        cmd.arg("-E")
            .env("IPMI_PASSWORD", self.password.as_str())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let start = std::time::Instant::now();
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PowerError::Config(format!(
                    "`{}` not found: install the Debian package `ipmitool` (apt-get install \
                     ipmitool), or use the native IpmiDriver",
                    self.opts.program.display()
                ))
            } else {
                PowerError::Config(format!("cannot run `{}`: {e}", self.opts.program.display()))
            }
        })?;
        // Dropping the future on timeout drops the child: kill_on_drop.
        let out = tokio::time::timeout(self.opts.call_timeout, child.wait_with_output())
            .await
            .map_err(|_| PowerError::Timeout {
                address: self.label.clone(),
                after: self.opts.call_timeout,
            })?
            .map_err(|e| PowerError::Protocol {
                address: self.label.clone(),
                detail: format!("waiting for ipmitool: {e}"),
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(self.classify(&stderr, start.elapsed()))
    }

    /// Maps ipmitool's error text to a `PowerError`. The text is scrubbed of
    /// the password (ipmitool does not print it, but a future version's
    /// debug output must not leak it through Anvil either).
    fn classify(&self, stderr: &str, elapsed: Duration) -> PowerError {
        let address = self.label.clone();
        let lower = stderr.to_lowercase();
        let has = |s: &str| lower.contains(s);
        if has("rakp 2 hmac is invalid")
            || has("unauthorized name")
            || has("invalid integrity check value")
            || has("rakp 4 message has invalid integrity")
            || has("illegal or unrecognized parameter")
        {
            return PowerError::AuthFailed { address };
        }
        if has("error in open session response") || has("no cipher suite match") {
            return PowerError::NotSupported {
                address,
                what: format!(
                    "cipher suite {} ({})",
                    self.opts.cipher_suite,
                    self.summary(stderr)
                ),
            };
        }
        if has("no response from remote controller")
            || has("get auth capabilities error")
            || has("timeout")
        {
            return PowerError::Timeout {
                address,
                after: elapsed,
            };
        }
        PowerError::Protocol {
            address,
            detail: format!("ipmitool failed: {}", self.summary(stderr)),
        }
    }

    /// The last two meaningful lines of ipmitool's stderr, password removed.
    fn summary(&self, stderr: &str) -> String {
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Loading IANA PEN Registry"))
            .collect();
        let tail = lines[lines.len().saturating_sub(2)..].join("; ");
        if self.password.is_empty() {
            tail
        } else {
            tail.replace(self.password.as_str(), "***")
        }
    }

    /// `ipmitool raw` output ("01 05 a0 04 00 00 00") as bytes.
    fn parse_raw(&self, out: &str) -> Result<Vec<u8>, PowerError> {
        out.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| PowerError::Protocol {
                address: self.label.clone(),
                detail: "unexpected `ipmitool raw` output".into(),
            })
    }

    async fn power_state_impl(&self) -> Result<PowerState, PowerError> {
        let out = self.run(&["chassis", "power", "status"]).await?;
        // "Chassis Power is on" / "Chassis Power is off"
        match out.trim().rsplit(' ').next() {
            Some("on") => Ok(PowerState::On),
            Some("off") => Ok(PowerState::Off),
            _ => Err(PowerError::Protocol {
                address: self.label.clone(),
                detail: format!("unexpected `chassis power status` output: {}", out.trim()),
            }),
        }
    }

    async fn set_boot_impl(&self, boot: BootOverride) -> Result<(), PowerError> {
        // `raw` rather than `chassis bootdev … options=`: the bytes are
        // exactly the native driver's (valid bit included) and do not
        // depend on the ipmitool version's option parsing.
        let current_efi = if boot.mode.is_none() {
            match self
                .run(&["raw", "0x00", "0x09", "0x05", "0x00", "0x00"])
                .await
            {
                Ok(out) => commands::boot_flags_efi(&self.parse_raw(&out)?).unwrap_or(false),
                Err(PowerError::Protocol { .. }) => false,
                Err(e) => return Err(e),
            }
        } else {
            false
        };
        let req = commands::boot_flags_request(boot, current_efi);
        let mut args = vec!["raw".to_string(), "0x00".into(), "0x08".into()];
        args.extend(req.iter().map(|b| format!("0x{b:02x}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).await.map(|_| ())
    }

    async fn inventory_impl(&self) -> Result<Inventory, PowerError> {
        let raw = self.parse_raw(&self.run(&["raw", "0x06", "0x01"]).await?)?;
        let id = DeviceId::parse(&raw).map_err(|detail| PowerError::Protocol {
            address: self.label.clone(),
            detail,
        })?;
        let mut inv = Inventory {
            bmc_firmware: Some(id.firmware.clone()),
            ..Inventory::default()
        };
        if let Ok(out) = self.run(&["raw", "0x06", "0x37"]).await
            && let Ok(g) = <[u8; 16]>::try_from(self.parse_raw(&out)?.as_slice())
        {
            inv.system_uuid = Some(commands::format_guid(&g));
        }
        if id.has_fru()
            && let Ok(out) = self.run(&["fru", "print", "0"]).await
        {
            let fru = parse_fru_print(&out);
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

/// `ipmitool fru print 0` ("Product Manufacturer  : Acme") → FruInfo.
fn parse_fru_print(out: &str) -> FruInfo {
    let mut f = FruInfo::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "Chassis Serial" => f.chassis_serial = v,
            "Board Mfg" => f.board_manufacturer = v,
            "Board Product" => f.board_product = v,
            "Board Serial" => f.board_serial = v,
            "Product Manufacturer" => f.product_manufacturer = v,
            "Product Name" => f.product_name = v,
            "Product Serial" => f.product_serial = v,
            _ => {}
        }
    }
    f
}

impl PowerDriver for IpmitoolDriver {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, PowerError>> {
        Box::pin(self.power_state_impl())
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::ForceOff => "off",
            PowerAction::SoftOff => "soft",
            PowerAction::Reset => "reset",
            PowerAction::Cycle => "cycle",
        };
        Box::pin(async move { self.run(&["chassis", "power", verb]).await.map(|_| ()) })
    }

    fn set_boot(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(self.set_boot_impl(boot))
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory, PowerError>> {
        Box::pin(self.inventory_impl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fru_print_is_parsed() {
        let out = " Chassis Type          : Rack Mount Chassis\n Chassis Serial        : CS1\n \
                   Board Mfg             : Acme\n Product Manufacturer  : Acme Servers\n \
                   Product Name          : Box\n Product Serial        : PS1\n";
        let f = parse_fru_print(out);
        assert_eq!(f.chassis_serial.as_deref(), Some("CS1"));
        assert_eq!(f.product_manufacturer.as_deref(), Some("Acme Servers"));
        assert_eq!(f.product_serial.as_deref(), Some("PS1"));
    }

    #[test]
    fn stderr_is_classified_and_scrubbed() {
        let creds = BmcCredentials {
            address: "127.0.0.1".into(),
            port: None,
            username: Some("admin".into()),
            password: Some("hunter2".into()),
            verify_tls: true,
            ca_pem: None,
        };
        let d = IpmitoolDriver::new(&creds, IpmitoolOptions::default()).unwrap();
        let e = d.classify(
            "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish \
             IPMI v2 / RMCP+ session\n",
            Duration::ZERO,
        );
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
        let e = d.classify("weird failure mentioning hunter2\n", Duration::ZERO);
        let s = e.to_string();
        assert!(!s.contains("hunter2") && s.contains("***"), "{s}");
    }
}
