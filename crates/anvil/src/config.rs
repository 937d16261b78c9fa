//! `anvil serve` configuration: defaults, then the TOML file (`--config`),
//! then `ANVIL_*` environment variables, then flags. Unknown keys in the file
//! are rejected with a message naming the key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Anvil keeps its SQLite database, secret key and admin password file.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; absent means SQLite in `data_dir/anvil.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub boot: BootConfig,
    /// IPv6 router advertisements on boot networks (off unless interfaces are named).
    pub ipv6_ra: anvil_ra::RaConfig,
    /// TFTP: on by default (iPXE binaries for firmware PXE clients).
    pub tftp: anvil_tftp::TftpConfig,
    /// DHCP: serves nothing until a `[[dhcp.network]]` is configured.
    pub dhcp: anvil_dhcp::DhcpConfig,
    pub power: PowerConfig,
    /// Commissioning: timeout, power-off when done, LLDP window, tests.
    #[serde(default)]
    pub commissioning: crate::commissioning_config::CommissioningSection,
    /// Synchronisation with NetBox (off unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbox: Option<crate::netbox_config::NetboxConfig>,
    /// The image library: largest import accepted.
    #[serde(default)]
    pub images: crate::images_config::ImagesConfig,
    /// Deployment, release and rescue: timeout.
    #[serde(default)]
    pub deploy: crate::deploy_config::DeploySection,
}

/// BMC work: how much at once, how long each may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerConfig {
    /// BMC calls in flight at once (actions and polls together).
    pub concurrency: usize,
    /// Longest one action may take, including waiting for the power state.
    pub action_timeout_secs: u64,
    /// Longest one power-state read may take.
    pub status_timeout_secs: u64,
    /// Seconds between two polls of every machine's power state; 0: off.
    pub poll_interval_secs: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            concurrency: 32,
            action_timeout_secs: 120,
            status_timeout_secs: 15,
            poll_interval_secs: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Directories searched for iPXE binaries served over HTTP (UEFI HTTP
    /// boot) and TFTP, in order. Empty means `<data_dir>/ipxe-bin`, then
    /// Debian's `/usr/lib/ipxe`.
    #[serde(default)]
    pub ipxe_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the API, web UI and HTTP boot.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `anvil=debug,sqlx=warn`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a web UI session, in hours.
    pub session_hours: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./anvil-data"),
            database_url: None,
            http: HttpConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            auth: AuthConfig { session_hours: 12 },
            boot: BootConfig {
                ipxe_dirs: Vec::new(),
            },
            ipv6_ra: anvil_ra::RaConfig::default(),
            tftp: anvil_tftp::TftpConfig::default(),
            dhcp: anvil_dhcp::DhcpConfig::default(),
            power: PowerConfig::default(),
            commissioning: Default::default(),
            netbox: None,
            images: Default::default(),
            deploy: Default::default(),
        }
    }
}

/// Values given as flags; `None` leaves the layer below in force.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tftp: Option<TftpOverride>,
}

#[derive(Debug, Serialize)]
pub struct TftpOverride {
    pub listen: SocketAddr,
}

#[derive(Debug, Serialize)]
pub struct HttpOverride {
    pub listen: SocketAddr,
}

#[derive(Debug, Default, Serialize)]
pub struct LogOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// Environment variables `anvil serve` reads (ANVIL_ + upper-case key, `__`
/// between section and key). Others with the ANVIL_ prefix belong to the CLI
/// (`ANVIL_URL`, `ANVIL_TOKEN`) or to the secret key (`ANVIL_SECRET_KEY`) and
/// are not configuration.
pub const ENV_KEYS: &[&str] = &[
    "tftp.listen",
    "tftp.enabled",
    "dhcp.enabled",
    "data_dir",
    "database_url",
    "http.listen",
    "log.level",
    "log.format",
    "auth.session_hours",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub fn load(file: Option<&Path>, flags: FlagOverrides) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        if !f.exists() {
            return Err(ConfigError::Missing(f.to_path_buf()));
        }
        fig = fig.merge(Toml::file_exact(f));
    }
    fig = fig
        .merge(
            Env::prefixed("ANVIL_")
                .split("__")
                .filter(|k| ENV_KEYS.contains(&k.as_str())),
        )
        .merge(Serialized::defaults(flags));
    let cfg: Config = fig
        .extract()
        .map_err(|e| ConfigError::Invalid(describe(e)))?;
    validate(&cfg)?;
    Ok(cfg)
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if let Some(url) = &cfg.database_url
        && !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
    {
        return Err(ConfigError::Invalid(format!(
            "database_url must start with postgres://, postgresql:// or sqlite:, not {:?}",
            anvil_store::redact_url(url)
        )));
    }
    cfg.dhcp
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    cfg.tftp
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Some(n) = &cfg.netbox {
        n.validate()?;
    }
    if cfg.auth.session_hours == 0 || cfg.auth.session_hours > 24 * 30 {
        return Err(ConfigError::Invalid(
            "auth.session_hours must be between 1 and 720".into(),
        ));
    }
    Ok(())
}

/// figment's errors, one line each, naming key and source.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| {
                    format!(
                        " (in {})",
                        m.source
                            .as_ref()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| m.name.to_string())
                    )
                })
                .unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Where iPXE binaries are looked for, defaults applied.
    pub fn ipxe_dirs(&self) -> Vec<PathBuf> {
        if self.boot.ipxe_dirs.is_empty() {
            vec![
                self.data_dir.join("ipxe-bin"),
                PathBuf::from("/usr/lib/ipxe"),
            ]
        } else {
            self.boot.ipxe_dirs.clone()
        }
    }

    /// The store URL: PostgreSQL if configured, else SQLite in the data dir.
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("anvil.db").display()),
        }
    }

    /// The effective configuration as TOML, with the database password hidden.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.as_deref().map(anvil_store::redact_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("anvil.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_keys_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "data_dir = \"/x\"\n[http]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n",
        );
        let e = load(Some(&f), FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listne"), "{e}");
        let f = write(d.path(), "colour = \"blue\"\n");
        let e = load(Some(&f), FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn layers_apply_in_order() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "data_dir = \"/from-file\"\n[http]\nlisten = \"127.0.0.1:7000\"\n",
        );
        let c = load(Some(&f), FlagOverrides::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from-file"));
        assert_eq!(c.http.listen.port(), 7000);
        assert_eq!(c.log.level, "info");
        let c = load(
            Some(&f),
            FlagOverrides {
                http: Some(HttpOverride {
                    listen: "127.0.0.1:7001".parse().unwrap(),
                }),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.http.listen.port(), 7001);
        assert_eq!(c.data_dir, PathBuf::from("/from-file"));
    }

    #[test]
    fn missing_file_and_bad_values() {
        let e = load(
            Some(Path::new("/nonexistent/anvil.toml")),
            FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Missing(_)));
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "[http]\nlisten = \"not an address\"\n");
        let e = load(Some(&f), FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
        let f = write(d.path(), "database_url = \"mysql://x\"\n");
        assert!(load(Some(&f), FlagOverrides::default()).is_err());
    }

    #[test]
    fn effective_config_hides_password() {
        let c = Config {
            database_url: Some("postgres://a:secret@h/db".into()),
            ..Config::default()
        };
        let t = c.to_toml();
        assert!(!t.contains("secret"), "{t}");
        assert!(t.contains("[http]"));
    }
}
