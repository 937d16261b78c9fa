//! Starting and stopping the `anvil serve` process under test. The benchmark
//! only ever signals the process it spawned itself, by its PID.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Environment variables `anvil` reads that must not leak from the caller's
/// shell into the process under test.
const SCRUBBED_ENV: &[&str] = &[
    "ANVIL_CONFIG",
    "ANVIL_DATA_DIR",
    "ANVIL_DATABASE_URL",
    "ANVIL_HTTP__LISTEN",
    "ANVIL_LOG__LEVEL",
    "ANVIL_LOG__FORMAT",
    "ANVIL_AUTH__SESSION_HOURS",
    "ANVIL_URL",
    "ANVIL_TOKEN",
    "ANVIL_SECRET_KEY",
];

pub struct Server {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`, from the line the server prints.
    pub base: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `anvil serve` on a loopback port chosen by the kernel and waits
    /// for the line announcing the address.
    pub async fn start(
        anvil: &Path,
        data_dir: &Path,
        database_url: Option<&str>,
        log: &Path,
    ) -> Result<Server> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(anvil);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            // TFTP is on by default (port 69): keep the benchmark off it.
            .arg("--tftp-listen")
            .arg("127.0.0.1:0");
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // If the benchmark itself fails or panics, do not leave the
            // server running (SIGKILL to this child only).
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", anvil.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let announce = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("anvil: listening on ") {
                    return Ok::<_, anyhow::Error>(Some(rest.trim().to_string()));
                }
            }
            Ok(None)
        };
        let base = match tokio::time::timeout(Duration::from_secs(60), announce).await {
            Ok(Ok(Some(base))) => base,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                bail!(
                    "anvil serve exited ({}) before announcing its address; its log:\n{}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    tail(log, 30)
                );
            }
            Ok(Err(e)) => return Err(e.context("cannot read the server's stdout")),
            Err(_) => bail!(
                "anvil serve did not announce its address within 60 s; its log:\n{}",
                tail(log, 30)
            ),
        };
        if !base.starts_with("http://127.0.0.1:") {
            bail!("unexpected listen address {base:?} (expected loopback)");
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            pid,
            base,
            log: log.to_path_buf(),
        })
    }

    /// Polls `GET /readyz` until it answers 200.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<Duration> {
        let start = Instant::now();
        let url = format!("{}/readyz", self.base);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "anvil serve exited ({status}) while waiting for /readyz; its log:\n{}",
                    tail(&self.log, 30)
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("/readyz did not answer 200 within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM to the server (by PID) and waits for it to exit. Falls
    /// back to SIGKILL after 20 s. Returns the exit status and how long the
    /// shutdown took.
    pub async fn stop(mut self) -> Result<(ExitStatus, Duration)> {
        let start = Instant::now();
        // One positive PID: signals exactly the process we spawned (no
        // process group, no name matching).
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .context("cannot run kill")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => Ok((status?, start.elapsed())),
            Err(_) => {
                self.child.start_kill()?;
                let _ = self.child.wait().await;
                bail!("anvil serve did not exit within 20 s of SIGTERM; killed it")
            }
        }
    }
}

/// `anvil token create bench --local … -o json` → the token's secret.
pub async fn local_token(
    anvil: &Path,
    data_dir: &Path,
    database_url: Option<&str>,
) -> Result<String> {
    let mut cmd = Command::new(anvil);
    cmd.args(["token", "create", "bench", "--local", "--data-dir"])
        .arg(data_dir);
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    cmd.args(["--output", "json"]);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("`anvil token create --local` took over 60 s")?
        .context("cannot run `anvil token create --local`")?;
    if !out.status.success() {
        bail!(
            "`anvil token create --local` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`anvil token create --local -o json` printed no JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    v.get("secret")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .context("no `secret` in the output of `anvil token create --local -o json`")
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
