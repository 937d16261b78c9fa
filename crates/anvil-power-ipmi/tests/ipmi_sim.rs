//! Both drivers against real OpenIPMI `ipmi_sim` BMCs (Debian `openipmi`)
//! and `ipmitool` (Debian `ipmitool`), each BMC on its own 127.77.x.y
//! address. Without those packages every test fails naming them, unless
//! ANVIL_SKIP_IPMI=1.

use anvil_power::{
    BootDevice, BootMode, BootOverride, PowerAction, PowerDriver, PowerError, PowerState,
    wait_for_state,
};
use anvil_power_ipmi::testing::{SimBmc, SimOptions, free_loopback_addr, tools_available};
use anvil_power_ipmi::{IpmiDriver, IpmiOptions, IpmitoolDriver, IpmitoolOptions};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Returns false when the test is to be skipped; panics (failing the test)
/// with the Debian package names when the tools are missing.
fn ipmi_tools() -> bool {
    match tools_available() {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

fn native(sim: &SimBmc) -> IpmiDriver {
    IpmiDriver::new(&sim.credentials(), fast()).unwrap()
}

fn fast() -> IpmiOptions {
    IpmiOptions {
        call_timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(300),
        ..IpmiOptions::default()
    }
}

fn ipmitool(sim: &SimBmc) -> IpmitoolDriver {
    IpmitoolDriver::new(&sim.credentials(), IpmitoolOptions::default()).unwrap()
}

const SETTLE: Duration = Duration::from_secs(5);

/// Every power action, checked in the state the chassis_control program
/// keeps and in what the driver reads back.
async fn exercise_power(d: &dyn PowerDriver, sim: &SimBmc) {
    let a = sim.ip.to_string();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    d.power(PowerAction::On).await.unwrap();
    wait_for_state(d, &a, PowerState::On, SETTLE).await.unwrap();
    assert!(sim.power());
    d.power(PowerAction::ForceOff).await.unwrap();
    wait_for_state(d, &a, PowerState::Off, SETTLE)
        .await
        .unwrap();
    assert!(!sim.power());
    // ipmi_sim cycles as "power 0", then "power 1" a second later.
    d.power(PowerAction::Cycle).await.unwrap();
    wait_for_state(d, &a, PowerState::On, SETTLE).await.unwrap();
    d.power(PowerAction::Reset).await.unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    d.power(PowerAction::SoftOff).await.unwrap();
    wait_for_state(d, &a, PowerState::Off, SETTLE)
        .await
        .unwrap();
    let calls = sim.calls();
    let i = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} missing from {calls:?}"))
    };
    assert!(i("power 1") < i("power 0"));
    assert!(i("reset 1") < i("shutdown 1"));
    assert_eq!(
        calls.iter().filter(|c| *c == "power 1").count(),
        2,
        "on + cycle: {calls:?}"
    );
}

async fn exercise_boot(d: &dyn PowerDriver, sim: &SimBmc) {
    d.set_boot(BootOverride {
        device: BootDevice::Pxe,
        once: true,
        mode: Some(BootMode::Uefi),
    })
    .await
    .unwrap();
    assert_eq!(sim.boot(), "pxe");
    assert!(sim.calls().contains(&"boot pxe".to_string()));
    // Mode left alone: the driver reads the current flags first.
    d.set_boot(BootOverride {
        device: BootDevice::Disk,
        once: false,
        mode: None,
    })
    .await
    .unwrap();
    assert_eq!(sim.boot(), "default", "ipmi_sim's name for the hard disk");
}

fn sim_with_fru() -> SimBmc {
    SimBmc::start(SimOptions {
        fru: Some((
            "Acme Servers".into(),
            "RackBox 9000".into(),
            "SN-0042".into(),
        )),
        ..SimOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn native_driver_powers_boots_and_inventories_a_real_bmc() {
    if !ipmi_tools() {
        return;
    }
    let sim = sim_with_fru();
    let d = native(&sim);
    let t = Instant::now();
    exercise_power(&d, &sim).await;
    exercise_boot(&d, &sim).await;
    // ipmi_sim has no SHA-256: the driver proposed 17, was refused, and runs 3.
    assert_eq!(d.cipher_suite().await, Some(3));
    let inv = d.inventory().await.unwrap();
    assert_eq!(inv.bmc_firmware.as_deref(), Some("9.08"));
    assert_eq!(
        inv.system_uuid.as_deref(),
        Some("5b0c4f3e-9d2a-4c1b-8e7f-0123456789ab")
    );
    assert_eq!(inv.manufacturer.as_deref(), Some("Acme Servers"));
    assert_eq!(inv.model.as_deref(), Some("RackBox 9000"));
    assert_eq!(inv.serial.as_deref(), Some("SN-0042"));
    assert_eq!(inv.power_state, Some(PowerState::Off));
    assert!(inv.cpus.is_empty() && inv.nics.is_empty() && inv.disks.is_empty());
    d.close().await;
    eprintln!("native driver against ipmi_sim: {:?}", t.elapsed());
}

#[tokio::test]
async fn ipmitool_fallback_does_the_same() {
    if !ipmi_tools() {
        return;
    }
    let sim = sim_with_fru();
    let d = ipmitool(&sim);
    exercise_power(&d, &sim).await;
    exercise_boot(&d, &sim).await;
    let inv = d.inventory().await.unwrap();
    assert_eq!(inv.bmc_firmware.as_deref(), Some("9.08"));
    assert_eq!(
        inv.system_uuid.as_deref(),
        Some("5b0c4f3e-9d2a-4c1b-8e7f-0123456789ab")
    );
    assert_eq!(inv.manufacturer.as_deref(), Some("Acme Servers"));
    assert_eq!(inv.serial.as_deref(), Some("SN-0042"));
}

#[tokio::test]
async fn a_bmc_on_another_port_and_without_fru() {
    if !ipmi_tools() {
        return;
    }
    let sim = SimBmc::start(SimOptions {
        port: 16623,
        power_on: true,
        ..SimOptions::default()
    })
    .unwrap();
    assert_eq!(sim.credentials().port, Some(16623));
    let d = native(&sim);
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    assert!(d.address().ends_with(":16623"));
    let inv = d.inventory().await.unwrap();
    assert_eq!(inv.serial, None, "no FRU data: no serial, no error");
    assert_eq!(inv.power_state, Some(PowerState::On));
    assert_eq!(ipmitool(&sim).power_state().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn wrong_credentials_are_auth_failed_without_the_password() {
    if !ipmi_tools() {
        return;
    }
    let sim = SimBmc::start(SimOptions::default()).unwrap();
    let secret = "Not-The-Passw0rd";
    let mut creds = sim.credentials();
    creds.password = Some(secret.into());
    let e = IpmiDriver::new(&creds, fast())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
    let e2 = IpmitoolDriver::new(&creds, IpmitoolOptions::default())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e2, PowerError::AuthFailed { .. }), "{e2}");
    creds.username = Some("nobody".into());
    creds.password = Some(sim.password.clone());
    let e3 = IpmiDriver::new(&creds, fast())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e3, PowerError::AuthFailed { .. }), "{e3}");
    for e in [&e, &e2, &e3] {
        let s = format!("{e} {e:?}");
        assert!(!s.contains(secret) && !s.contains(&sim.password), "{s}");
    }
}

/// What the proxy in front of ipmi_sim does to Open Session Requests.
#[derive(Clone, Copy, PartialEq)]
enum Meddle {
    /// Answers "no cipher suite match" to everything but suite 0: with the
    /// real ipmi_sim behind it, a BMC that offers only cipher 0.
    OnlySuite0,
    /// Rewrites the proposed algorithms to none/none/none, so ipmi_sim
    /// answers "OK, no authentication, no integrity, no encryption".
    Downgrade,
}

struct Proxy {
    addr: SocketAddr,
    /// (auth, integrity, confidentiality) of every Open Session Request
    /// a client sent.
    proposals: Arc<Mutex<Vec<(u8, u8, u8)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(to: SocketAddr, mode: Meddle) -> Proxy {
    let ip = free_loopback_addr(623).unwrap();
    let front = UdpSocket::bind((ip, 623)).await.unwrap();
    let back = UdpSocket::bind((ip, 0)).await.unwrap();
    back.connect(to).await.unwrap();
    let proposals = Arc::new(Mutex::new(Vec::new()));
    let seen = proposals.clone();
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let p = &mut a[..n];
                    // RMCP+ (auth type 6), payload 0x10, session 0.
                    if n >= 48 && p[4] == 0x06 && p[5] & 0x3F == 0x10 {
                        let algs = (p[28] & 0x3F, p[36] & 0x3F, p[44] & 0x3F);
                        seen.lock().unwrap().push(algs);
                        if mode == Meddle::OnlySuite0 && algs != (0, 0, 0) {
                            let tag = p[16];
                            let mut r = vec![0x06, 0x00, 0xFF, 0x07, 0x06, 0x11];
                            r.extend_from_slice(&[0; 8]);
                            r.extend_from_slice(&[2, 0, tag, 0x11]);
                            let _ = front.send_to(&r, from).await;
                            continue;
                        }
                        if mode == Meddle::Downgrade {
                            p[28] = 0;
                            p[36] = 0;
                            p[44] = 0;
                        }
                    }
                    let _ = back.send(p).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    Proxy {
        addr: SocketAddr::from((ip, 623)),
        proposals,
        task,
    }
}

#[tokio::test]
async fn a_bmc_offering_only_cipher_0_is_refused() {
    if !ipmi_tools() {
        return;
    }
    let sim = SimBmc::start(SimOptions::default()).unwrap();
    let px = proxy(sim.addr(), Meddle::OnlySuite0).await;
    let mut creds = sim.credentials();
    creds.address = px.addr.ip().to_string();

    // The peer is real and dangerous: ipmitool -C 0 reads the power state
    // through the proxy with a WRONG password.
    let out = tokio::process::Command::new("ipmitool")
        .args(["-I", "lanplus", "-C", "0", "-N", "1", "-R", "2"])
        .args(["-H", &creds.address, "-U", "admin", "-E"])
        .args(["chassis", "power", "status"])
        .env("IPMI_PASSWORD", "any-password-at-all")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Chassis Power is off"), "{text}");

    let proposals_before = px.proposals.lock().unwrap().len();
    let e = IpmiDriver::new(&creds, fast())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cipher suite 17") && msg.contains("3"),
        "{msg}"
    );
    assert!(msg.contains("never falls back"), "{msg}");
    let ours = px.proposals.lock().unwrap()[proposals_before..].to_vec();
    assert_eq!(ours, [(3, 4, 1), (1, 1, 1)], "17 then 3, never 0");

    let e = IpmitoolDriver::new(&creds, IpmitoolOptions::default())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");

    // And asking for suite 0 is refused before any packet is sent.
    let before = px.proposals.lock().unwrap().len();
    let e = IpmiDriver::new(
        &creds,
        IpmiOptions {
            cipher_suites: vec![0],
            ..fast()
        },
    )
    .unwrap_err();
    assert!(matches!(e, PowerError::Config(_)), "{e}");
    let e = IpmitoolDriver::new(
        &creds,
        IpmitoolOptions {
            cipher_suite: 0,
            ..IpmitoolOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, PowerError::Config(_)), "{e}");
    assert_eq!(px.proposals.lock().unwrap().len(), before);
}

#[tokio::test]
async fn a_bmc_that_downgrades_the_proposal_is_refused() {
    if !ipmi_tools() {
        return;
    }
    let sim = SimBmc::start(SimOptions::default()).unwrap();
    let px = proxy(sim.addr(), Meddle::Downgrade).await;
    let mut creds = sim.credentials();
    creds.address = px.addr.ip().to_string();
    let d = IpmiDriver::new(
        &creds,
        IpmiOptions {
            cipher_suites: vec![3],
            ..fast()
        },
    )
    .unwrap();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("0/0/0 instead of the proposed 1/1/1"),
        "{e}"
    );
    d.power(PowerAction::On).await.unwrap_err();
    assert!(!sim.power(), "no command went through");
}

#[tokio::test]
async fn a_hung_bmc_times_out_within_the_bound() {
    if !ipmi_tools() {
        return;
    }
    let ip = free_loopback_addr(623).unwrap();
    // Receives everything, answers nothing.
    let _hung = std::net::UdpSocket::bind((ip, 623)).unwrap();
    let creds = anvil_power::BmcCredentials {
        address: ip.to_string(),
        port: None,
        username: Some("admin".into()),
        password: Some("password".into()),
        verify_tls: true,
        ca_pem: None,
    };
    let bound = Duration::from_millis(1500);
    let d = IpmiDriver::new(
        &creds,
        IpmiOptions {
            call_timeout: bound,
            retry_initial: Duration::from_millis(200),
            ..IpmiOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let e = d.power_state().await.unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(e, PowerError::Timeout { after, .. } if after == bound),
        "{e}"
    );
    assert!(
        took >= bound && took < bound + Duration::from_millis(1000),
        "{took:?}"
    );

    let d = IpmitoolDriver::new(
        &creds,
        IpmitoolOptions {
            call_timeout: Duration::from_secs(2),
            ..IpmitoolOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Timeout { .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    if !ipmi_tools() {
        return;
    }
    let ip = free_loopback_addr(623).unwrap();
    let creds = anvil_power::BmcCredentials {
        address: ip.to_string(),
        port: None,
        username: Some("admin".into()),
        password: Some("password".into()),
        verify_tls: true,
        ca_pem: None,
    };
    let d = IpmiDriver::new(
        &creds,
        IpmiOptions {
            call_timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(200),
            ..IpmiOptions::default()
        },
    )
    .unwrap();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Unreachable { .. }), "{e}");
}

/// The password reaches ipmitool through its environment only: while an
/// ipmitool call is running (against a BMC that never answers), its
/// command line, which every user can read through `ps`, lacks it.
#[tokio::test]
async fn the_password_is_never_on_the_ipmitool_command_line() {
    if !ipmi_tools() {
        return;
    }
    let ip = free_loopback_addr(623).unwrap();
    let _hung = std::net::UdpSocket::bind((ip, 623)).unwrap();
    let secret = "Sup3r-S3cret-pw";
    let creds = anvil_power::BmcCredentials {
        address: ip.to_string(),
        port: None,
        username: Some("admin".into()),
        password: Some(secret.into()),
        verify_tls: true,
        ca_pem: None,
    };
    let d = IpmitoolDriver::new(
        &creds,
        IpmitoolOptions {
            call_timeout: Duration::from_secs(3),
            ..IpmitoolOptions::default()
        },
    )
    .unwrap();
    let call = tokio::spawn(async move { d.power_state().await });
    let host = ip.to_string();
    let mut found = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("ipmitool") && cmd.contains(&host)).then(|| {
                let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
                (cmd, String::from_utf8_lossy(&env).into_owned())
            })
        });
        if found.is_some() {
            break;
        }
    }
    let (cmdline, environ) = found.expect("the ipmitool process was not seen");
    assert!(!cmdline.contains(secret), "{cmdline}");
    assert!(cmdline.contains(" -E "), "{cmdline}");
    assert!(environ.contains(&format!("IPMI_PASSWORD={secret}")));
    let e = call.await.unwrap().unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret));
}

#[tokio::test]
async fn a_missing_ipmitool_binary_names_the_debian_package() {
    let creds = anvil_power::BmcCredentials {
        address: "127.77.0.1".into(),
        port: None,
        username: Some("admin".into()),
        password: Some("password".into()),
        verify_tls: true,
        ca_pem: None,
    };
    let d = IpmitoolDriver::new(
        &creds,
        IpmitoolOptions {
            program: "/nonexistent/ipmitool".into(),
            ..IpmitoolOptions::default()
        },
    )
    .unwrap();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Config(_)), "{e}");
    assert!(e.to_string().contains("Debian package `ipmitool`"), "{e}");
}
