//! A real sushy-tools 2.2.0 emulator (fake driver) on 127.0.0.1, one per
//! test, with its own state directory, users and systems.
//!
//! The venv comes from `scripts/sushy-venv.sh` (created once, then reused).
//! Without it the tests fail, unless `ANVIL_SKIP_SUSHY=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct FakeSystem {
    pub uuid: &'static str,
    pub name: &'static str,
    pub power_on: bool,
    pub macs: &'static [&'static str],
    /// One drive of this size on a storage controller, if set.
    pub disk_bytes: Option<u64>,
}

pub struct Sushy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `true` when the sushy tests are switched off on purpose.
pub fn skipped() -> bool {
    if std::env::var("ANVIL_SKIP_SUSHY").as_deref() == Ok("1") {
        eprintln!("ANVIL_SKIP_SUSHY=1: sushy-tools test skipped");
        return true;
    }
    false
}

fn workspace_target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

/// The venv's directory, created on first use in this process.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = VENV.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ANVIL_SUSHY_VENV") {
            let dir = PathBuf::from(dir);
            if !dir.join("bin/sushy-emulator").is_file() {
                return Err(format!(
                    "ANVIL_SUSHY_VENV={} has no bin/sushy-emulator",
                    dir.display()
                ));
            }
            return Ok(dir);
        }
        // Relative to the crates/ directory, so other crates' tests (the
        // binary's end-to-end power tests) can include this module too.
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../anvil-power-redfish/scripts/sushy-venv.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(workspace_target().join("sushy-venv"))
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match result {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "the sushy-tools venv could not be created, so the Redfish tests against a real \
             emulator cannot run. Fix the cause below (PyPI access, python3-venv), or set \
             ANVIL_SKIP_SUSHY=1 to skip these tests.\n{e}"
        ),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// htpasswd lines with bcrypt hashes (the only kind sushy-tools accepts),
/// made by the venv's bcrypt; passwords go through stdin, not argv.
fn htpasswd(venv: &Path, users: &[(&str, &str)]) -> String {
    let mut child = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, bcrypt\n\
             for line in sys.stdin.read().splitlines():\n\
             \x20   user, pw = line.split('\\t', 1)\n\
             \x20   print(user + ':' + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for (u, p) in users {
            writeln!(stdin, "{u}\t{p}").expect("write to python");
        }
    }
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "bcrypt hashing failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn config(port: u16, dir: &Path, systems: &[FakeSystem]) -> String {
    let mut sys = String::new();
    let mut storage = String::new();
    let mut drives = String::new();
    for s in systems {
        let nics: Vec<String> = s
            .macs
            .iter()
            .map(|m| format!("{{'mac': {}, 'ip': '127.0.0.1'}}", py_str(m)))
            .collect();
        sys.push_str(&format!(
            "  {{'uuid': {}, 'name': {}, 'power_state': {}, 'external_notifier': False, 'nics': [{}]}},\n",
            py_str(s.uuid),
            py_str(s.name),
            if s.power_on { "'On'" } else { "'Off'" },
            nics.join(", ")
        ));
        if let Some(bytes) = s.disk_bytes {
            storage.push_str(&format!(
                "  {}: [{{'Id': '1', 'Name': 'Local Storage Controller', 'StorageControllers': \
                 [{{'MemberId': '0', 'Name': 'RAID', 'SpeedGbps': 12}}], 'Drives': ['d1']}}],\n",
                py_str(s.uuid)
            ));
            drives.push_str(&format!(
                "  ({}, '1'): [{{'Id': 'd1', 'Name': 'Drive 1', 'CapacityBytes': {bytes}, 'Protocol': 'SAS'}}],\n",
                py_str(s.uuid)
            ));
        }
    }
    format!(
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
         SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
         SUSHY_EMULATOR_FAKE_DRIVER = True\n\
         SUSHY_EMULATOR_AUTH_FILE = {auth}\n\
         SUSHY_EMULATOR_STATE_DIR = {state}\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = [\n{sys}]\n\
         SUSHY_EMULATOR_STORAGE = {{\n{storage}}}\n\
         SUSHY_EMULATOR_DRIVES = {{\n{drives}}}\n",
        auth = py_str(&dir.join("htpasswd").to_string_lossy()),
        state = py_str(&dir.join("state").to_string_lossy()),
    )
}

impl Sushy {
    /// Starts an emulator and waits until it answers.
    pub fn start(systems: &[FakeSystem], users: &[(&str, &str)]) -> Sushy {
        let venv = venv();
        let mut dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("htpasswd"), htpasswd(&venv, users)).expect("htpasswd");
        // A port picked free can be taken before sushy binds it: try again.
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join("emulator.conf");
            std::fs::write(&conf, config(port, dir.path(), systems)).expect("config");
            let log = std::fs::File::create(dir.path().join("emulator.log")).expect("log");
            let err = log.try_clone().expect("log");
            let child = Command::new(venv.join("bin/sushy-emulator"))
                .arg("--config")
                .arg(&conf)
                .stdout(log)
                .stderr(err)
                .spawn()
                .expect("start sushy-emulator");
            let mut sushy = Sushy { child, port, dir };
            if sushy.wait_ready(Duration::from_secs(30)) {
                return sushy;
            }
            dir = sushy.take_dir();
        }
        panic!("sushy-emulator did not start; see its log above");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default();
        eprintln!("sushy-emulator did not come up:\n{log}");
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /redfish/v1/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf).is_ok_and(|n| n > 0)
                    && buf.starts_with(b"HTTP/1.")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
