//! End-to-end network-boot harness: real machines (QEMU, TCG) that boot over
//! the network from Anvil, inside network namespaces the test creates.
//!
//! Topology of one [`Lab`]: a namespace `anvil-e2e-<pid>-<n>` with a bridge
//! `br0` (10.77.<n>.1/24 and fd77:77:<n>::1/64) and `lo`; a tap per VM on the
//! bridge; `anvil serve` (and, for the baseline, dnsmasq) inside it. Other
//! hosts on the same wire (a separate DHCP server, a DHCP client) get their
//! own namespace `anvil-e2e-<pid>-<n>-<name>` joined to the bridge by a veth
//! pair. Nothing touches the root namespace's interfaces, and nothing leaves
//! the namespaces: everything is removed on drop, also on panic. Processes
//! are killed by the PID this harness started them with.
//!
//! The test process itself stays in the root namespace; its HTTP requests to
//! Anvil are made from a short-lived thread that has joined the lab's
//! namespace with setns(2) (a network namespace is per thread).

#![allow(dead_code)] // helpers used by some tests only, or by ignored ones

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a VM may take from QEMU start to calling home.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// VMs running at once (each TCG guest keeps one core busy; this machine
/// kind has two).
const MAX_PARALLEL_VMS: usize = 2;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

// --- prerequisites ------------------------------------------------------------

/// `None` when the VM tests are switched off with `ANVIL_SKIP_VM_TESTS=1`.
/// Otherwise every missing prerequisite fails the test with the Debian
/// package that provides it.
pub fn prerequisites(uefi: bool) -> Option<()> {
    if std::env::var("ANVIL_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("ANVIL_SKIP_VM_TESTS=1: skipping the network-boot VM test");
        return None;
    }
    let mut missing: Vec<String> = Vec::new();
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        missing.push(
            "root (network namespaces, bridges and taps need it; run the tests as root \
             or set ANVIL_SKIP_VM_TESTS=1)"
                .into(),
        );
    }
    let need_file = |missing: &mut Vec<String>, path: &str, what: &str, pkg: &str| {
        if !Path::new(path).exists() {
            missing.push(format!(
                "{what} ({path}): install the Debian package `{pkg}`"
            ));
        }
    };
    let need_prog = |missing: &mut Vec<String>, prog: &str, pkg: &str| {
        if which(prog).is_none() {
            missing.push(format!(
                "`{prog}` is not on PATH: install the Debian package `{pkg}`"
            ));
        }
    };
    need_prog(&mut missing, "ip", "iproute2");
    need_prog(&mut missing, "qemu-system-x86_64", "qemu-system-x86");
    need_prog(&mut missing, "dnsmasq", "dnsmasq-base");
    need_file(
        &mut missing,
        "/dev/net/tun",
        "the tun/tap device",
        "(kernel: tun module)",
    );
    need_file(
        &mut missing,
        "/usr/lib/ipxe/qemu/efi-e1000.rom",
        "QEMU's iPXE option ROM for e1000",
        "ipxe-qemu",
    );
    need_file(
        &mut missing,
        "/usr/lib/ipxe/ipxe.efi",
        "iPXE for UEFI",
        "ipxe",
    );
    need_file(
        &mut missing,
        "/usr/lib/ipxe/undionly.kpxe",
        "iPXE for BIOS PXE",
        "ipxe",
    );
    need_file(
        &mut missing,
        "/bin/busybox",
        "busybox (udhcpc)",
        "busybox-static",
    );
    if uefi {
        need_file(&mut missing, OVMF, "UEFI firmware for QEMU", "ovmf");
    }
    if uid == "0" && missing.is_empty() && !netns_usable() {
        missing.push("`ip netns add` fails: network namespaces are not usable here".into());
    }
    assert!(
        missing.is_empty(),
        "the network-boot VM tests cannot run (set ANVIL_SKIP_VM_TESTS=1 to skip them):\n  - {}\n\
         All at once: apt-get install -y qemu-system-x86 qemu-utils ipxe ipxe-qemu ovmf \
         dnsmasq-base busybox-static iproute2 cpio kmod",
        missing.join("\n  - ")
    );
    Some(())
}

/// Whether network namespaces can be made at all (some containers forbid
/// them); probed once.
fn netns_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let name = format!("anvil-e2e-{}-probe", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ok
    })
}

pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Builds (once, cached on disk by the script's stamp) the discovery kernel
/// and initrd with `scripts/boot-assets/build.sh target/boot-assets`.
pub fn boot_assets() -> PathBuf {
    static ASSETS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| {
            let root = workspace_root();
            let out = root.join("target/boot-assets");
            let started = Instant::now();
            let o = Command::new("bash")
                .arg(root.join("scripts/boot-assets/build.sh"))
                .arg(&out)
                .output()
                .map_err(|e| format!("cannot run build.sh: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "scripts/boot-assets/build.sh failed ({}):\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            eprintln!(
                "boot assets ready in {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            Ok(out)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

// --- namespaces -------------------------------------------------------------

unsafe extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;
const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: u64 = 9;

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let h = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid descriptor only changes this thread's
        // network namespace; the thread ends when `f` returns.
        let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

fn run(cmd: &mut Command) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Namespaces left by an earlier run of these tests that was killed (its
/// owner PID is gone): their processes are ended and they are removed; so
/// are the log directories of earlier runs.
fn remove_stale_namespaces() {
    let me = std::process::id().to_string();
    if let Ok(dirs) = std::fs::read_dir(workspace_root().join("target/e2e-boot")) {
        for d in dirs.filter_map(Result::ok) {
            let name = d.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("anvil-e2e-")
                .and_then(|r| r.split('-').next());
            if owner.is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("anvil-e2e-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_netns_pids(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

/// Ends the processes still inside a namespace this harness created.
fn kill_netns_pids(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(1);

struct Proc {
    name: String,
    child: Child,
}

/// One boot network: a namespace with a bridge, and everything started in
/// or attached to it. Dropping it kills the processes (by PID) and removes
/// the namespaces.
pub struct Lab {
    pub ns: String,
    pub n: u32,
    /// Logs and data of this lab: `target/e2e-boot/<ns>/`, removed when the
    /// test passes (unless `ANVIL_E2E_KEEP=1`), kept (and named) when it fails.
    pub dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    hosts: Mutex<Vec<String>>,
    taps: AtomicU32,
}

impl Lab {
    pub fn new() -> Lab {
        static STALE: OnceLock<()> = OnceLock::new();
        STALE.get_or_init(remove_stale_namespaces);
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        assert!(n < 250, "too many labs in one run");
        let ns = format!("anvil-e2e-{}-{n}", std::process::id());
        let dir = workspace_root().join("target/e2e-boot").join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ip(&["netns", "add", &ns]);
        // From here on, Drop cleans up whatever was made.
        let lab = Lab {
            ns,
            n,
            dir,
            procs: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            taps: AtomicU32::new(0),
        };
        let ns = lab.ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", lab.server_ip()),
            "dev",
            "br0",
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("fd77:77:{}::1/64", lab.n),
            "dev",
            "br0",
            "nodad",
        ]);
        ip(&["-n", ns, "link", "set", "br0", "up"]);
        lab
    }

    /// The bridge's address: Anvil's address on the boot network.
    pub fn server_ip(&self) -> String {
        format!("10.77.{}.1", self.n)
    }

    pub fn subnet(&self) -> String {
        format!("10.77.{}.0/24", self.n)
    }

    /// An address on the boot network, `10.77.<n>.<host>`.
    pub fn addr(&self, host: u8) -> String {
        format!("10.77.{}.{host}", self.n)
    }

    /// A MAC for VM or client `k` of this lab.
    pub fn mac(&self, k: u8) -> String {
        format!("52:54:00:77:{:02x}:{k:02x}", self.n)
    }

    /// A new tap on the bridge, for a VM.
    pub fn add_tap(&self) -> String {
        let k = self.taps.fetch_add(1, Ordering::SeqCst);
        let tap = format!("tap{k}");
        let ns = self.ns.as_str();
        ip(&["-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        ip(&["-n", ns, "link", "set", &tap, "master", "br0"]);
        ip(&["-n", ns, "link", "set", &tap, "up"]);
        tap
    }

    /// Another host on the same wire: a namespace of its own, joined to the
    /// bridge by a veth pair, its end named `eth0` with `mac` and, if given,
    /// `addr/24`. Returns the namespace's name.
    pub fn add_host(&self, name: &str, mac: &str, addr: Option<&str>) -> String {
        let hns = format!("{}-{name}", self.ns);
        ip(&["netns", "add", &hns]);
        self.hosts.lock().unwrap().push(hns.clone());
        let k = self.hosts.lock().unwrap().len();
        let br_end = format!("veth{k}");
        ip(&[
            "-n", &self.ns, "link", "add", &br_end, "type", "veth", "peer", "name", "eth0",
            "netns", &hns,
        ]);
        ip(&["-n", &self.ns, "link", "set", &br_end, "master", "br0"]);
        ip(&["-n", &self.ns, "link", "set", &br_end, "up"]);
        ip(&["-n", &hns, "link", "set", "eth0", "address", mac]);
        ip(&["-n", &hns, "link", "set", "lo", "up"]);
        ip(&["-n", &hns, "link", "set", "eth0", "up"]);
        if let Some(a) = addr {
            ip(&["-n", &hns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
        }
        hns
    }

    /// `ip netns exec NS prog args…` (the child's PID is the program's: `ip`
    /// execs it).
    /// The program gets SIGKILL if the thread that started it ends first
    /// (a killed test run leaves no QEMU behind; the namespaces of such a
    /// run are removed by the next one).
    pub fn command_in(ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL, 0u64, 0u64, 0u64);
                Ok(())
            });
        }
        c
    }

    /// Starts a long-running process with its output to `<dir>/<name>.log`.
    /// Killed (by PID) when the lab drops.
    pub fn spawn(&self, name: &str, mut cmd: Command) -> u32 {
        let log = File::create(self.dir.join(format!("{name}.log"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc {
            name: name.to_string(),
            child,
        });
        pid
    }

    fn adopt(&self, name: &str, child: Child) -> u32 {
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc {
            name: name.to_string(),
            child,
        });
        pid
    }

    /// Whether process `name` has exited (and how).
    pub fn exited(&self, name: &str) -> Option<std::process::ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.iter_mut().find(|p| p.name == name)?;
        p.child.try_wait().ok().flatten()
    }

    /// Kills process `name` now (by its PID) and waits for it.
    pub fn stop(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(i) = procs.iter().position(|p| p.name == name) {
            let mut p = procs.remove(i);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn log(&self, name: &str) -> String {
        read_lossy(&self.dir.join(format!("{name}.log")))
    }

    /// The last lines of every log of this lab, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            if p.extension().and_then(|e| e.to_str()) != Some("log") {
                continue;
            }
            let text = read_lossy(&p);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "\n----- {} (last {} lines) -----\n{}\n",
                p.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for mut p in procs.into_iter().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for h in hosts.iter().chain(std::iter::once(&self.ns)) {
            // Our own children are gone; anything else still in there was
            // started through them (e.g. a udhcpc that outlived its parent).
            kill_netns_pids(h);
            let _ = Command::new("ip").args(["netns", "del", h]).status();
        }
        if std::thread::panicking() {
            eprintln!("e2e: logs of the failed lab kept in {}", self.dir.display());
        } else if std::env::var("ANVIL_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("e2e: ANVIL_E2E_KEEP=1: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// --- Anvil ------------------------------------------------------------------

pub struct Anvil {
    pub url: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub ns: String,
    pub pid: u32,
}

impl Anvil {
    /// Starts `anvil serve` inside the lab's namespace on `<server_ip>:8080`
    /// with the discovery kernel and initrd in `<data>/boot/discovery/`, and
    /// `extra_toml` appended to its configuration file.
    pub fn start(lab: &Lab, extra_toml: &str) -> Anvil {
        let assets = boot_assets();
        let data_dir = lab.dir.join("anvil-data");
        let disc = data_dir.join("boot/discovery");
        std::fs::create_dir_all(&disc).unwrap();
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(assets.join(f), disc.join(f)).unwrap();
        }
        let config = lab.dir.join("anvil.toml");
        std::fs::write(
            &config,
            format!(
                "[log]\nlevel = \"info,anvil=debug,anvil_dhcp=debug,anvil_tftp=debug\"\n\n{extra_toml}"
            ),
        )
        .unwrap();
        let listen = format!("{}:8080", lab.server_ip());
        let mut cmd = Lab::command_in(&lab.ns, crate::common::ANVIL);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", &listen])
            .env_remove("ANVIL_SECRET_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(lab.dir.join("anvil.log")).unwrap());
        let mut child = cmd.spawn().expect("cannot start anvil serve");
        let stdout = child.stdout.take().unwrap();
        let pid = lab.adopt("anvil", child);
        let (tx, rx) = std::sync::mpsc::channel();
        let out_log = lab.dir.join("anvil-stdout.log");
        std::thread::spawn(move || {
            let mut log = File::create(out_log).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = log.as_mut() {
                    let _ = writeln!(l, "{line}");
                }
                if let Some(url) = line.strip_prefix("anvil: listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => panic!(
                "anvil serve did not start in {}:\n{}",
                lab.ns,
                lab.log("anvil")
            ),
        };
        assert_eq!(url, format!("http://{listen}"), "unexpected listen line");
        let out = Command::new(crate::common::ANVIL)
            .args(["token", "create", "e2e", "--local", "--data-dir"])
            .arg(&data_dir)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "anvil token create --local failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let token = v["secret"].as_str().expect("token secret").to_string();
        Anvil {
            url,
            data_dir,
            token,
            ns: lab.ns.clone(),
            pid,
        }
    }

    /// A request to Anvil's API (`path` under `/api/v1`, or an absolute
    /// path such as `/metrics`) from inside the namespace: status and JSON
    /// (or the text as a JSON string).
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = if path.starts_with("/api/")
            || path.starts_with("/metrics")
            || path.starts_with("/boot/")
        {
            format!("{}{path}", self.url)
        } else {
            format!("{}/api/v1{path}", self.url)
        };
        let token = self.token.clone();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        in_netns(&self.ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut rb = crate::common::client()
                    .request(method, &url)
                    .bearer_auth(token);
                if let Some(b) = body {
                    rb = rb.json(&b);
                }
                let r = rb
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (status, v)
            })
        })
    }

    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.request("GET", path, None);
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    /// The machine that owns `mac`, if any.
    pub fn machine_by_mac(&self, mac: &str) -> Option<Value> {
        let v = self.get(&format!("/machines?mac={mac}"));
        v["items"].as_array().and_then(|a| a.first()).cloned()
    }

    pub fn leases(&self, mac: &str) -> Vec<Value> {
        self.get(&format!("/leases?mac={mac}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn timeline(&self, machine_id: &str) -> Value {
        self.get(&format!("/machines/{machine_id}/boot-timeline"))
    }

    /// Polls until `f` gives `Some`, at most `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Anvil) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn metrics(&self) -> String {
        let (st, v) = self.request("GET", "/metrics", None);
        assert_eq!(st, 200);
        v.as_str().map(str::to_string).unwrap_or_default()
    }
}

// --- dnsmasq (the baseline boot server, and a plain DHCP server) ------------

/// How dnsmasq serves the boot network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DnsmasqRole {
    /// The whole boot service next to Anvil's HTTP boot: DHCP, TFTP of the
    /// iPXE binaries, and the iPXE script URL `http://<anvil>/boot/${mac}.ipxe`
    /// (iPXE expands `${mac}` in the filename it is given). The benchmark
    /// baseline for Anvil's own DHCP and TFTP.
    BootServer { router_advertisements: bool },
    /// The site's ordinary DHCP server: addresses only, no boot options.
    AddressesOnly,
}

/// Starts dnsmasq (no DNS: `--port=0`) on `iface` in namespace `ns`, handing
/// out `10.77.<n>.100-199`. Its log is `<dir>/<name>.log`.
pub fn start_dnsmasq(lab: &Lab, ns: &str, iface: &str, name: &str, role: DnsmasqRole) -> u32 {
    let n = lab.n;
    let mut args: Vec<String> = vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        format!("--interface={iface}"),
        "--bind-interfaces".into(),
        "--log-dhcp".into(),
        format!(
            "--dhcp-leasefile={}",
            lab.dir.join(format!("{name}.leases")).display()
        ),
        format!(
            "--pid-file={}",
            lab.dir.join(format!("{name}.pid")).display()
        ),
        format!("--dhcp-range=10.77.{n}.100,10.77.{n}.199,255.255.255.0,1h"),
        format!("--dhcp-option=option:router,10.77.{n}.1"),
        "--dhcp-authoritative".into(),
    ];
    if let DnsmasqRole::BootServer {
        router_advertisements,
    } = role
    {
        let anvil = lab.server_ip();
        args.extend([
            "--enable-tftp".into(),
            "--tftp-root=/usr/lib/ipxe".into(),
            "--dhcp-userclass=set:ipxe,iPXE".into(),
            "--dhcp-match=set:efi64,option:client-arch,7".into(),
            "--dhcp-match=set:efi64,option:client-arch,9".into(),
            "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi".into(),
            "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe".into(),
            format!("--dhcp-boot=tag:ipxe,http://{anvil}:8080/boot/${{mac}}.ipxe"),
        ]);
        if router_advertisements {
            args.extend([
                "--enable-ra".into(),
                format!("--dhcp-range=fd77:77:{n}::,ra-only"),
            ]);
        }
    }
    let mut cmd = Lab::command_in(ns, "dnsmasq");
    cmd.args(&args);
    let pid = lab.spawn(name, cmd);
    // Ready when it logs its DHCP range (or dead).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab.log(name).contains("DHCP, IP range") {
            return pid;
        }
        if let Some(st) = lab.exited(name) {
            panic!("dnsmasq exited ({st}):\n{}", lab.log(name));
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq did not start:\n{}",
            lab.log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- VMs --------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's e1000 option ROM, which is iPXE.
    BiosIpxeRom,
    /// OVMF with a virtio-net NIC without option ROM: the firmware's own PXE
    /// client fetches ipxe.efi by TFTP, which then boots over HTTP.
    UefiPxe,
}

/// Slots for VMs running at once.
static VM_SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct VmSlot;

impl VmSlot {
    fn take() -> VmSlot {
        let (m, cv) = &VM_SLOTS;
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_PARALLEL_VMS {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        VmSlot
    }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let (m, cv) = &VM_SLOTS;
        *m.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

pub struct Vm {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub serial: PathBuf,
    pub started: Instant,
    _slot: VmSlot,
}

/// What the serial console showed when the VM called home.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// QEMU start to `ANVIL-CALLHOME-OK` on the serial console.
    pub to_callhome: Duration,
    /// The serial log.
    pub serial: String,
    /// When each [`MILESTONES`] text first showed on the serial console
    /// (polled every 100 ms), since QEMU start.
    pub milestones: Vec<(&'static str, Duration)>,
}

/// Serial-console texts that mark the phases of a network boot.
pub const MILESTONES: &[(&str, &str)] = &[
    ("uefi_pxe_start", ">>Start PXE over IPv4"),
    ("uefi_pxe_dhcp_done", "Station IP address is"),
    ("uefi_nbp_loaded", "NBP file downloaded successfully"),
    ("ipxe_start", "iPXE initialising devices"),
    ("ipxe_dhcp_start", "Configuring (net0"),
    ("ipxe_dhcp_done", "Filename:"),
    ("ipxe_script", "Anvil: "),
    ("kernel_start", "Linux version"),
    ("init_start", "ANVIL-INIT: up"),
    ("ramdisk_dhcp_start", "ANVIL-INIT: interface"),
    ("ramdisk_dhcp_done", "ANVIL-DHCP:"),
    ("callhome", "ANVIL-CALLHOME-OK"),
];

/// Serial-console texts after which the boot cannot reach the call-home:
/// the test fails at once instead of at the timeout.
const FAILURES: &[(&str, &str)] = &[
    (
        "booting from disk",
        "Anvil served the local-disk iPXE script instead of discovery",
    ),
    (
        "boot failed, retrying",
        "iPXE could not load the kernel or initrd Anvil's script named",
    ),
    ("No bootable device", "the firmware found nothing to boot"),
    (
        "PXE-E",
        "the UEFI firmware's PXE boot failed (DHCP or TFTP)",
    ),
    ("Kernel panic", "the discovery kernel panicked"),
];

/// The phases worth comparing between boot servers: (name, from, to).
const PHASES: &[(&str, &str, &str)] = &[
    ("fw_dhcp", "uefi_pxe_start", "uefi_pxe_dhcp_done"),
    ("tftp_nbp", "uefi_pxe_dhcp_done", "uefi_nbp_loaded"),
    ("ipxe_dhcp", "ipxe_dhcp_start", "ipxe_dhcp_done"),
    (
        "http_script_kernel_initrd",
        "ipxe_dhcp_done",
        "kernel_start",
    ),
    ("ramdisk_dhcp", "ramdisk_dhcp_start", "ramdisk_dhcp_done"),
    ("callhome_post", "ramdisk_dhcp_done", "callhome"),
];

impl BootResult {
    pub fn at(&self, milestone: &str) -> Option<Duration> {
        self.milestones
            .iter()
            .find(|(m, _)| *m == milestone)
            .map(|(_, t)| *t)
    }

    /// `name=1.2s` for each phase both ends of which were seen.
    pub fn phases(&self) -> String {
        PHASES
            .iter()
            .filter_map(|(name, from, to)| {
                let (a, b) = (self.at(from)?, self.at(to)?);
                Some(format!("{name}={:.1}s", b.saturating_sub(a).as_secs_f64()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Vm {
    /// Starts QEMU (TCG, q35, 512 MiB) inside the lab's namespace on a new
    /// tap, network boot only, serial console to `<dir>/<name>.serial`.
    pub fn start(lab: &Lab, name: &str, firmware: Firmware, mac: &str) -> Vm {
        let slot = VmSlot::take();
        let tap = lab.add_tap();
        let serial = lab.dir.join(format!("{name}.serial"));
        let mut cmd = Lab::command_in(&lab.ns, "qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
            // No default devices (the CD-ROM OVMF would try first, VGA, …);
            // -nographic still puts the firmware's and iPXE's text on the
            // serial console.
            .args(["-nographic", "-nodefaults", "-monitor", "none"])
            .args(["-no-reboot", "-boot", "n"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
        match firmware {
            Firmware::BiosIpxeRom => {
                cmd.arg("-device")
                    .arg(format!("e1000,netdev=n0,mac={mac},autonegotiation=off"));
            }
            Firmware::UefiPxe => {
                cmd.args(["-bios", OVMF])
                    .arg("-device")
                    .arg(format!("virtio-net-pci,netdev=n0,romfile=,mac={mac}"));
            }
        }
        let started = Instant::now();
        lab.spawn(name, cmd);
        Vm {
            name: name.to_string(),
            mac: mac.to_string(),
            firmware,
            serial,
            started,
            _slot: slot,
        }
    }

    pub fn serial_log(&self) -> String {
        read_lossy(&self.serial)
    }

    /// Waits (at most [`BOOT_TIMEOUT`]) for the discovery ramdisk to print
    /// `ANVIL-CALLHOME-OK`; panics with the serial log and the lab's logs if
    /// it prints `ANVIL-CALLHOME-FAILED`, QEMU exits first, or time runs out.
    pub fn wait_for_callhome(&self, lab: &Lab) -> BootResult {
        let deadline = self.started + BOOT_TIMEOUT;
        let mut milestones: Vec<(&'static str, Duration)> = Vec::new();
        loop {
            let now = self.started.elapsed();
            let log = self.serial_log();
            for (name, text) in MILESTONES {
                if !milestones.iter().any(|(m, _)| m == name) && log.contains(text) {
                    milestones.push((name, now));
                }
            }
            if log.contains("ANVIL-CALLHOME-OK") {
                return BootResult {
                    to_callhome: now,
                    serial: log,
                    milestones,
                };
            }
            let why = if log.contains("ANVIL-CALLHOME-FAILED") {
                Some("the discovery ramdisk could not call home".to_string())
            } else if let Some((text, what)) = FAILURES.iter().find(|(t, _)| log.contains(t)) {
                Some(format!("{what} (serial console: {text:?})"))
            } else if let Some(st) = lab.exited(&self.name) {
                // The serial file may lag the exit by a moment.
                std::thread::sleep(Duration::from_millis(300));
                if self.serial_log().contains("ANVIL-CALLHOME-OK") {
                    continue;
                }
                Some(format!("QEMU exited ({st}) before the call-home"))
            } else if Instant::now() > deadline {
                Some(format!("no call-home within {} s", BOOT_TIMEOUT.as_secs()))
            } else {
                None
            };
            if let Some(why) = why {
                panic!(
                    "VM {} ({:?}, {}): {why}\n===== serial console =====\n{}\n===== logs ====={}",
                    self.name,
                    self.firmware,
                    self.mac,
                    printable(&self.serial_log()),
                    lab.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The serial log without terminal escapes, for messages.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … final byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if c2.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Seconds of the kernel's uptime the ramdisk reported in its call-home.
pub fn reported_uptime(serial: &str) -> Option<f64> {
    serial
        .lines()
        .rev()
        .find(|l| l.contains("ANVIL-CALLHOME: try"))
        .and_then(|l| l.split("\"uptime_secs\": ").nth(1))
        .and_then(|r| r.trim_end_matches(['}', '\r', ' ']).parse().ok())
}

/// Prints (and appends to `target/e2e-boot/timings.txt`) one timing line.
pub fn record_timing(test: &str, server: &str, firmware: Firmware, r: &BootResult) {
    let line = format!(
        "e2e-boot timing: test={test} server={server} firmware={firmware:?} qemu_start_to_callhome={:.1}s kernel_uptime_at_callhome={} phases: {}",
        r.to_callhome.as_secs_f64(),
        reported_uptime(&r.serial)
            .map(|u| format!("{u:.1}s"))
            .unwrap_or_else(|| "?".into()),
        r.phases()
    );
    append_timing("timings.txt", &line);
}

/// Prints `line` and appends it to `target/e2e-boot/<file>`, where the VM
/// tests and benchmarks keep their figures across runs (best effort: a
/// figure that cannot be written is still printed).
pub fn append_timing(file: &str, line: &str) {
    println!("{line}");
    let path = workspace_root().join("target/e2e-boot").join(file);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

// --- DHCP clients -----------------------------------------------------------

/// What busybox udhcpc got (the environment its script saw on `bound`).
#[derive(Debug, Clone, Default)]
pub struct DhcpAnswer {
    pub ok: bool,
    pub env: HashMap<String, String>,
    pub output: String,
}

/// Runs `busybox udhcpc` once on `eth0` of host namespace `hns` (a few
/// tries, no address configured), with vendor class `vendor` if given.
pub fn udhcpc(lab: &Lab, hns: &str, tag: &str, vendor: Option<&str>, tries: u32) -> DhcpAnswer {
    let script = lab.dir.join(format!("udhcpc-{tag}.sh"));
    let envfile = lab.dir.join(format!("udhcpc-{tag}.env"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            envfile.display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("755").arg(&script));
    let mut cmd = Lab::command_in(hns, "busybox");
    // Only the DHCP variables reach the script's environment.
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(["udhcpc", "-i", "eth0", "-f", "-q", "-n", "-T", "2", "-t"])
        .arg(tries.to_string())
        .arg("-s")
        .arg(&script);
    if let Some(v) = vendor {
        cmd.args(["-V", v]);
    }
    let o = cmd.output().expect("cannot run busybox udhcpc");
    let env = read_lossy(&envfile)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    DhcpAnswer {
        ok: o.status.success(),
        env,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}
