//! The `[netbox]` section of the `anvil serve` configuration, and how it
//! becomes the settings of `anvil_core::netbox`. Secrets (the API token, the
//! webhook secret, the BMC password of imported devices) are never in the
//! file itself: each comes from a file or an environment variable.

use crate::config::ConfigError;
use anvil_core::netbox::{BmcDefaults, NetboxSettings};
use anvil_netbox::{ClientConfig, Mapping, NetBoxClient, Scope};
use anvil_types::BmcDriver;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetboxConfig {
    /// NetBox's base URL, e.g. `https://netbox.example.com`.
    pub url: String,
    /// A file holding the API token (v2 `nbt_…` or legacy v1), or …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// … the environment variable that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The secret of the NetBox webhook (HMAC of `X-Hook-Signature`), from
    /// a file or an environment variable. Without one, webhooks are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    /// Verify NetBox's TLS certificate (default true).
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// Trust only this CA (PEM file) for NetBox's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Per NetBox request.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Between two full reconciles.
    #[serde(default = "default_interval")]
    pub reconcile_interval_secs: u64,
    #[serde(default)]
    pub scope: ScopeConfig,
    #[serde(default)]
    pub mapping: MappingConfig,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    60
}
fn default_interval() -> u64 {
    900
}

/// Which NetBox devices Anvil manages; every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Site slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Location slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Rack id (racks have no slug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<u64>,
    /// Device role slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Tag slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The device custom field for Anvil's state (created if missing).
    #[serde(default = "default_state_field")]
    pub state_field: String,
    /// The device interface that is the BMC (holds `oob_ip`).
    #[serde(default = "default_bmc_interface")]
    pub bmc_interface: String,
    /// Credentials given to the BMCs of imported devices.
    #[serde(default)]
    pub bmc_credentials: BmcCredentialsConfig,
    /// Write the LLDP neighbours commissioning heard as NetBox cables
    /// between two interfaces that have none (existing cables are never
    /// changed: a disagreement is a conflict). On by default.
    #[serde(default = "yes")]
    pub lldp_cables: bool,
}

fn default_state_field() -> String {
    "anvil_state".into()
}
fn default_bmc_interface() -> String {
    "bmc".into()
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig {
            state_field: default_state_field(),
            bmc_interface: default_bmc_interface(),
            bmc_credentials: BmcCredentialsConfig::default(),
            lldp_cables: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcCredentialsConfig {
    /// `redfish` (default) or `ipmi`.
    #[serde(default = "default_driver")]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Verify the BMCs' TLS certificates (Redfish). BMCs usually ship
    /// self-signed ones, hence false by default here.
    #[serde(default)]
    pub verify_tls: bool,
}

fn default_driver() -> String {
    "redfish".into()
}

impl Default for BmcCredentialsConfig {
    fn default() -> Self {
        BmcCredentialsConfig {
            driver: default_driver(),
            username: None,
            password_file: None,
            password_env: None,
            verify_tls: false,
        }
    }
}

fn invalid(m: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(format!("netbox.{}", m.into()))
}

/// A secret from a file or an environment variable (exactly one of them
/// when `required`).
fn secret(
    what: &str,
    file: Option<&PathBuf>,
    env: Option<&String>,
    required: bool,
) -> Result<Option<String>, ConfigError> {
    let v = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!("{what}_file and {what}_env are exclusive")));
        }
        (Some(f), None) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| invalid(format!("{what}_file: cannot read {}: {e}", f.display())))?,
        ),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            invalid(format!(
                "{what}_env: the environment variable {var} is not set"
            ))
        })?),
        (None, None) if required => {
            return Err(invalid(format!("{what}_file or {what}_env is required")));
        }
        (None, None) => None,
    };
    match v.map(|s| s.trim().to_string()) {
        Some(s) if s.is_empty() => Err(invalid(format!("{what} is empty"))),
        other => Ok(other),
    }
}

impl NetboxConfig {
    /// Checks what can be checked without reading secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = url::Url::parse(&self.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid("url must be http:// or https://"));
        }
        if self.timeout_secs == 0 || self.reconcile_interval_secs == 0 {
            return Err(invalid(
                "timeout_secs and reconcile_interval_secs must be at least 1",
            ));
        }
        if self.mapping.state_field.is_empty()
            || !self
                .mapping
                .state_field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "mapping.state_field: lower-case letters, digits and _ (a NetBox custom field name)",
            ));
        }
        self.mapping
            .bmc_credentials
            .driver
            .parse::<BmcDriver>()
            .map_err(|e| invalid(format!("mapping.bmc_credentials.driver: {}", e.message)))?;
        Ok(())
    }

    /// The settings of the sync, with secrets read.
    pub fn settings(&self) -> Result<NetboxSettings, ConfigError> {
        self.validate()?;
        let token = secret(
            "token",
            self.token_file.as_ref(),
            self.token_env.as_ref(),
            true,
        )?
        .unwrap_or_default();
        let ca_pem = match &self.ca_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| invalid(format!("ca_file: cannot read {}: {e}", f.display())))?,
            ),
            None => None,
        };
        let mut client = ClientConfig::new(self.url.clone(), token);
        client.verify_tls = self.verify_tls;
        client.ca_pem = ca_pem;
        client.timeout = Duration::from_secs(self.timeout_secs);
        let client = NetBoxClient::new(client).map_err(|e| invalid(e.to_string()))?;
        let creds = &self.mapping.bmc_credentials;
        Ok(NetboxSettings {
            client,
            scope: Scope {
                site: self.scope.site.clone(),
                location: self.scope.location.clone(),
                rack: self.scope.rack,
                role: self.scope.role.clone(),
                tag: self.scope.tag.clone(),
            },
            mapping: Mapping {
                state_field: self.mapping.state_field.clone(),
                bmc_interface: self.mapping.bmc_interface.clone(),
                lldp_cables: self.mapping.lldp_cables,
            },
            webhook_secret: secret(
                "webhook_secret",
                self.webhook_secret_file.as_ref(),
                self.webhook_secret_env.as_ref(),
                false,
            )?,
            bmc: BmcDefaults {
                driver: creds.driver.parse().ok(),
                username: creds.username.clone(),
                password: secret(
                    "mapping.bmc_credentials.password",
                    creds.password_file.as_ref(),
                    creds.password_env.as_ref(),
                    false,
                )?,
                verify_tls: creds.verify_tls,
            },
            interval: Duration::from_secs(self.reconcile_interval_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NetboxConfig {
        toml::from_str("url = \"https://netbox.example\"\ntoken_env = \"X\"\n").unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = base();
        assert!(c.verify_tls);
        assert_eq!(c.mapping.state_field, "anvil_state");
        assert_eq!(c.mapping.bmc_interface, "bmc");
        assert_eq!(c.reconcile_interval_secs, 900);
        c.validate().unwrap();
        let mut bad = base();
        bad.url = "ftp://x".into();
        assert!(bad.validate().is_err());
        let mut bad = base();
        bad.mapping.state_field = "Anvil State".into();
        assert!(bad.validate().is_err());
        let mut bad = base();
        bad.mapping.bmc_credentials.driver = "telnet".into();
        assert!(bad.validate().unwrap_err().to_string().contains("driver"));
        assert!(toml::from_str::<NetboxConfig>("url = \"x\"\ntokn = 1\n").is_err());
    }

    #[test]
    fn lldp_cables_default_on_and_reach_the_mapping() {
        assert!(base().mapping.lldp_cables);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "nbt_abc.def\n").unwrap();
        let off: NetboxConfig = toml::from_str(&format!(
            "url = \"https://netbox.example\"\ntoken_file = {:?}\n[mapping]\nlldp_cables = false\n",
            f.display().to_string()
        ))
        .unwrap();
        assert!(!off.mapping.lldp_cables);
        assert!(!off.settings().unwrap().mapping.lldp_cables);
        let mut on = off.clone();
        on.mapping.lldp_cables = true;
        assert!(on.settings().unwrap().mapping.lldp_cables);
        assert!(
            toml::from_str::<NetboxConfig>(
                "url = \"https://n\"\ntoken_env = \"X\"\n[mapping]\nlldp_cables = \"yes\"\n"
            )
            .is_err(),
            "a non-boolean is refused"
        );
    }

    #[test]
    fn token_comes_from_a_file_and_secrets_are_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "nbt_abc.def\n").unwrap();
        let mut c = base();
        c.token_env = None;
        c.token_file = Some(f.clone());
        c.settings().unwrap();
        c.token_env = Some("ANVIL_TEST_UNSET_VARIABLE".into());
        assert!(c.settings().unwrap_err().to_string().contains("exclusive"));
        c.token_file = None;
        assert!(c.settings().unwrap_err().to_string().contains("not set"));
        c.token_env = None;
        assert!(c.settings().unwrap_err().to_string().contains("required"));
        std::fs::write(&f, "  \n").unwrap();
        c.token_file = Some(f);
        assert!(c.settings().unwrap_err().to_string().contains("empty"));
    }
}
