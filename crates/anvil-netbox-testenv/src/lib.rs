//! A real, throw-away NetBox 4.7 for Anvil's tests and benchmarks.
//!
//! [`NetBox::start`] runs `scripts/netbox/instance.sh start` (a fresh database
//! cloned from the template that `scripts/netbox/setup.sh` migrated once, a
//! private Redis, gunicorn on 127.0.0.1, an RQ worker, a superuser with a v2
//! and a v1 token) and [`Drop`] stops it and drops its database. It returns
//! `None` with a printed skip message when `ANVIL_NETBOX_HOME` is not set, i.e.
//! setup.sh has not been run; `scripts/test.sh` always runs it, so CI never
//! skips. Seeding goes through NetBox's own REST API ([`seed`]), and
//! [`webhook::WebhookListener`] receives NetBox's webhooks on loopback.
//!
//! ```no_run
//! # async fn demo() -> Result<(), anvil_netbox_testenv::Error> {
//! let Some(nb) = anvil_netbox_testenv::NetBox::start() else { return Ok(()) };
//! let base = nb.seed_basics("dc1").await?;
//! let device = nb.create_device(&base, &anvil_netbox_testenv::DeviceSpec::numbered(1, 2)).await?;
//! # Ok(()) }
//! ```

mod env_file;
mod error;
pub mod seed;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use env_file::parse_env_file;
pub use error::Error;
pub use seed::{Basics, DeviceSpec, SeededDevice};

/// The variable `scripts/netbox/setup.sh` prints (its STATE_DIR).
pub const HOME_ENV: &str = "ANVIL_NETBOX_HOME";

/// One running NetBox; stopped (processes killed, database dropped) on drop.
pub struct NetBox {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// `nbt_<key>.<secret>`, sent as `Authorization: Bearer ...`.
    pub token_v2: String,
    /// 40-character legacy token, sent as `Authorization: Token ...`.
    pub token_v1: String,
    /// The superuser (for logging into the web UI while debugging a test).
    pub username: String,
    pub password: String,
    /// The instance's database in the shared PostgreSQL cluster.
    pub database: String,
    home: PathBuf,
    // Declared last: removed after `Drop::drop` has stopped the instance.
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl NetBox {
    /// Starts a NetBox, or returns `None` (printing why) when setup.sh has not
    /// been run. Panics when setup.sh has been run but the start fails: a
    /// broken NetBox must fail the test, not skip it.
    pub fn start() -> Option<NetBox> {
        match Self::try_start() {
            Ok(nb) => nb,
            Err(e) => panic!("starting a test NetBox failed: {e}"),
        }
    }

    /// [`NetBox::start`] with the error returned instead of a panic.
    pub fn try_start() -> Result<Option<NetBox>, Error> {
        let Some(home) = std::env::var_os(HOME_ENV) else {
            eprintln!(
                "SKIP: {HOME_ENV} is not set; run `eval \"$(scripts/netbox/setup.sh)\"` \
                 (scripts/test.sh does) to test against a real NetBox"
            );
            return Ok(None);
        };
        Self::start_in(Path::new(&home)).map(Some)
    }

    /// Starts an instance from the setup in `home` (setup.sh's STATE_DIR).
    pub fn start_in(home: &Path) -> Result<NetBox, Error> {
        // Short path: the instance's Redis socket lives in it (sun_path is 108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("anvil-netbox-")
            .tempdir_in(std::env::temp_dir())
            .map_err(Error::TempDir)?;
        let output = instance_command(home, "start", dir.path())
            // If this process dies before Drop runs, instance.sh's watchdog stops NetBox.
            .env("ANVIL_NETBOX_OWNER_PID", std::process::id().to_string())
            .output()
            .map_err(Error::Spawn)?;
        if !output.status.success() {
            return Err(Error::Start {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                logs: log_tails(dir.path()),
            });
        }
        let env_path = dir.path().join("env");
        let text = std::fs::read_to_string(&env_path).map_err(|source| Error::ReadEnv {
            path: env_path.clone(),
            source,
        })?;
        let vars = parse_env_file(&text);
        let var = |key: &str| {
            vars.get(key).cloned().ok_or_else(|| Error::MissingKey {
                path: env_path.clone(),
                key: key.to_owned(),
            })
        };
        let nb = NetBox {
            url: var("NETBOX_URL")?,
            token_v2: var("NETBOX_TOKEN_V2")?,
            token_v1: var("NETBOX_TOKEN_V1")?,
            username: var("NETBOX_USERNAME")?,
            password: var("NETBOX_PASSWORD")?,
            database: var("NETBOX_DB")?,
            home: home.to_owned(),
            http: http_client()?,
            dir,
        };
        Ok(nb)
    }

    /// The instance directory (env file, logs of redis, gunicorn, rqworker).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// setup.sh's STATE_DIR this instance was started from.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// An HTTP client for talking to this instance (plain HTTP, loopback).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `Authorization` header value for the v2 token.
    pub fn auth_v2(&self) -> String {
        format!("Bearer {}", self.token_v2)
    }

    /// `Authorization` header value for the v1 token.
    pub fn auth_v1(&self) -> String {
        format!("Token {}", self.token_v1)
    }

    /// Creates `devices` devices in bulk through Django's ORM (much faster than
    /// REST) with `scripts/netbox/seed-bulk.py`; see that script for the shape.
    /// Returns the script's one-line JSON summary.
    pub fn seed_bulk(&self, devices: u32) -> Result<serde_json::Value, Error> {
        let script = scripts_dir().join("seed-bulk.py");
        let output = Command::new("python3")
            .arg(&script)
            .arg("--instance")
            .arg(self.dir.path())
            .arg("--devices")
            .arg(devices.to_string())
            .env(HOME_ENV, &self.home)
            .output()
            .map_err(Error::Spawn)?;
        if !output.status.success() {
            return Err(Error::SeedBulk {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).map_err(|source| Error::SeedBulkOutput {
            output: stdout.into_owned(),
            source,
        })
    }
}

impl Drop for NetBox {
    fn drop(&mut self) {
        match instance_command(&self.home, "stop", self.dir.path()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "stopping the test NetBox in {} failed ({}): {}",
                self.dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("could not run instance.sh stop: {e}"),
        }
    }
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netbox")
}

fn instance_command(home: &Path, action: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(scripts_dir().join("instance.sh"))
        .arg(action)
        .arg(dir)
        .env(HOME_ENV, home);
    cmd
}

/// The last lines of each log in the instance dir, for a start error.
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for name in [
        "start.log",
        "createdb.err",
        "tokens.log",
        "redis.log",
        "gunicorn.log",
        "rqworker.log",
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
        }
    }
    out
}

fn http_client() -> Result<reqwest::Client, Error> {
    // The workspace's reqwest brings no TLS provider of its own; NetBox is plain
    // HTTP here, but building a client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(Error::HttpClient)
}
