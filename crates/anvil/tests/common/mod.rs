//! A real `anvil serve` for integration tests: the built binary on
//! 127.0.0.1 port 0 with a fresh data directory, killed (by its PID) when
//! the handle drops.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ANVIL: &str = env!("CARGO_BIN_EXE_anvil");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: tempfile::TempDir,
    pub token: String,
    pub database_url: Option<String>,
}

impl Server {
    /// Starts a server on SQLite in a fresh data directory.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let (child, url) = spawn_serve(data_dir.path(), extra);
        let database_url = extra
            .iter()
            .position(|a| *a == "--database-url")
            .map(|i| extra[i + 1].to_string());
        let mut s = Server {
            child,
            url,
            data_dir,
            token: String::new(),
            database_url,
        };
        s.token = s.local_token("tests");
        s
    }

    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }

    /// `anvil token create --local`, the bootstrap path playbooks use.
    pub fn local_token(&self, name: &str) -> String {
        let mut cmd = Command::new(ANVIL);
        cmd.args(["token", "create", name, "--local", "--data-dir"])
            .arg(self.data_path())
            .args(["--output", "json"]);
        if let Some(u) = &self.database_url {
            cmd.args(["--database-url", u]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "token create --local failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["secret"].as_str().unwrap().to_string()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    /// Sends SIGTERM and returns the exit status (clean shutdown check).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY-free: kill(1) by the PID we started.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "anvil did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `anvil serve` and waits for its "listening on" line.
pub fn spawn_serve(data_dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(ANVIL)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tftp-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env_remove("ANVIL_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(data_dir.join("serve.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("anvil: listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => (child, url),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(data_dir.join("serve.log")).unwrap_or_default();
            panic!("anvil serve did not start:\n{log}");
        }
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn anvil_cmd(server: &Server) -> Command {
    let mut c = Command::new(ANVIL);
    c.env("ANVIL_URL", &server.url)
        .env("ANVIL_TOKEN", &server.token);
    c
}

pub fn path_buf(p: &Path) -> PathBuf {
    p.to_path_buf()
}

/// A scratch PostgreSQL database for one test, on the server
/// `ANVIL_TEST_POSTGRES_URL` names (`scripts/test.sh` sets it up), dropped
/// when the test ends, pass or fail.
pub struct ScratchPg {
    /// Where the test's servers connect.
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchPg {
    /// `None` when the PostgreSQL half is skipped on purpose
    /// (`ANVIL_SKIP_POSTGRES=1`); panics when it is merely not set up.
    pub async fn create(prefix: &str) -> Option<ScratchPg> {
        use sqlx::Executor;
        let Ok(admin_url) = std::env::var("ANVIL_TEST_POSTGRES_URL") else {
            if std::env::var("ANVIL_SKIP_POSTGRES").as_deref() == Ok("1") {
                return None;
            }
            panic!("ANVIL_TEST_POSTGRES_URL is not set: run scripts/test.sh");
        };
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap();
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("ANVIL_TEST_POSTGRES_URL must end with /DATABASE"),
        };
        Some(ScratchPg {
            url,
            admin_url,
            name,
        })
    }
}

impl Drop for ScratchPg {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime: use a runtime of its own
        // on another thread.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Executor;
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
                    .await
                    .ok()?;
                c.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()
            })
        })
        .join();
    }
}
