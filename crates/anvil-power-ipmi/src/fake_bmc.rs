//! A scriptable RMCP+ BMC for unit tests, built on the crate's own wire and
//! crypto code from the BMC's side of the exchange.
//!
//! Its main job is to verify cipher suite 17, which ipmi_sim cannot do:
//! ipmitool's independent RAKP-HMAC-SHA256 / HMAC-SHA256-128 / AES-CBC-128
//! implementation logs in to it and reads the power state, which only
//! works if every formula here (RAKP 2/3/4, SIK, K1, K2, packet integrity,
//! encryption) matches ipmitool's. It also plays the misbehaving BMCs:
//! suite 0 only, downgrading answers, silence, packet loss, lost sessions.

use crate::crypto::{self, RakpInputs, SessionKeys};
use crate::session::{SUITE_3, SUITE_17, Suite};
use crate::wire::{self, payload};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Accepts the given suite only.
    Normal,
    /// Accepts only cipher suite 0 (answers "no cipher suite match" to
    /// every other proposal).
    OnlySuite0,
    /// Says OK to any proposal but with algorithms none/none/none.
    Downgrade,
    /// Never answers anything.
    Silent,
}

#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// (auth, integrity, confidentiality) of every Open Session Request.
    pub proposals: Vec<(u8, u8, u8)>,
    pub sessions_opened: usize,
    /// (netfn, cmd, data) of every IPMI request inside a session.
    pub commands: Vec<(u8, u8, Vec<u8>)>,
    pub power_on: bool,
    /// Session requests to drop before answering (simulated loss).
    pub drop_next: usize,
}

struct Pending {
    console_sid: u32,
    bmc_sid: u32,
    rm: [u8; 16],
    rc: [u8; 16],
    role: u8,
    username: Vec<u8>,
}

struct Active {
    console_sid: u32,
    bmc_sid: u32,
    keys: SessionKeys,
    out_seq: u32,
}

pub(crate) struct FakeBmc {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    /// Clearing this makes the BMC forget its sessions (as after a reboot).
    sessions: Arc<Mutex<Vec<Active>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const GUID: [u8; 16] = [
    0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];

impl FakeBmc {
    pub(crate) async fn start(suite: Suite, mode: Mode, user: &str, password: &str) -> FakeBmc {
        let ip = crate::testing::free_loopback_addr(0).unwrap();
        let sock = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let (s2, x2) = (seen.clone(), sessions.clone());
        let (user, password) = (user.as_bytes().to_vec(), password.as_bytes().to_vec());
        let task = tokio::spawn(async move {
            let mut pending: Vec<Pending> = Vec::new();
            let mut next_sid = 0x200u32;
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if mode == Mode::Silent {
                    continue;
                }
                let p = &buf[..n];
                let reply = handle(
                    p,
                    suite,
                    mode,
                    &user,
                    &password,
                    &s2,
                    &x2,
                    &mut pending,
                    &mut next_sid,
                );
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, from).await;
                }
            }
        });
        FakeBmc {
            addr,
            seen,
            sessions,
            task,
        }
    }

    pub(crate) fn forget_sessions(&self) {
        self.sessions.lock().unwrap().clear();
    }

    pub(crate) fn credentials(&self, user: &str, password: &str) -> anvil_power::BmcCredentials {
        anvil_power::BmcCredentials {
            address: self.addr.ip().to_string(),
            port: Some(self.addr.port()),
            username: Some(user.into()),
            password: Some(password.into()),
            verify_tls: true,
            ca_pem: None,
        }
    }
}

fn rsp_msg(req: &wire::IpmiMessage, data: &[u8]) -> Vec<u8> {
    wire::encode_message(
        req.rq_addr,
        req.netfn | 1,
        req.rs_addr,
        req.rq_seq,
        req.cmd,
        data,
    )
}

#[allow(clippy::too_many_arguments)]
fn handle(
    p: &[u8],
    suite: Suite,
    mode: Mode,
    user: &[u8],
    password: &[u8],
    seen: &Mutex<Seen>,
    sessions: &Mutex<Vec<Active>>,
    pending: &mut Vec<Pending>,
    next_sid: &mut u32,
) -> Option<Vec<u8>> {
    if p.len() < 5 {
        return None;
    }
    if p[4] != wire::AUTH_TYPE_RMCP_PLUS {
        // IPMI v1.5 sessionless: Get Channel Authentication Capabilities.
        let m = wire::decode_message(wire::decode_v15(p).ok()?).ok()?;
        if (m.netfn, m.cmd) != (0x06, 0x38) {
            return None;
        }
        // Channel 1; RMCP+ extended data present; IPMI v2.0 supported.
        let data = [0x00, 0x01, 0x80 | 0x14, 0x04, 0x02, 0, 0, 0, 0];
        return Some(wire::encode_v15_sessionless(&rsp_msg(&m, &data)));
    }
    let session_id = u32::from_le_bytes([p[6], p[7], p[8], p[9]]);
    if session_id == 0 {
        let d = wire::decode_rmcp_plus(p, None).ok()?;
        let q = &d.payload;
        let out = match d.payload_type {
            payload::OPEN_SESSION_REQUEST if q.len() >= 32 => {
                let proposed = (q[12] & 0x3F, q[20] & 0x3F, q[28] & 0x3F);
                seen.lock().unwrap().proposals.push(proposed);
                let want = (suite.auth_alg, suite.integrity_alg, suite.conf_alg);
                let ok = match mode {
                    Mode::OnlySuite0 => proposed == (0, 0, 0),
                    Mode::Downgrade => true,
                    _ => proposed == want,
                };
                if !ok {
                    (payload::OPEN_SESSION_RESPONSE, vec![q[0], 0x11])
                } else {
                    let console_sid = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
                    *next_sid += 2;
                    let bmc_sid = *next_sid;
                    let mut rc = [0u8; 16];
                    crypto::fill_random(&mut rc).ok()?;
                    pending.push(Pending {
                        console_sid,
                        bmc_sid,
                        rm: [0; 16],
                        rc,
                        role: 0,
                        username: Vec::new(),
                    });
                    let algs = if mode == Mode::Downgrade {
                        (0, 0, 0)
                    } else {
                        proposed
                    };
                    let mut r = vec![q[0], 0, 4, 0];
                    r.extend_from_slice(&console_sid.to_le_bytes());
                    r.extend_from_slice(&bmc_sid.to_le_bytes());
                    for (kind, alg) in [(0u8, algs.0), (1, algs.1), (2, algs.2)] {
                        r.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
                    }
                    (payload::OPEN_SESSION_RESPONSE, r)
                }
            }
            payload::RAKP1 if q.len() >= 28 => {
                let bmc_sid = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
                let pd = pending.iter_mut().find(|x| x.bmc_sid == bmc_sid)?;
                pd.rm.copy_from_slice(&q[8..24]);
                pd.role = q[24];
                let ulen = usize::from(q[27]);
                pd.username = q.get(28..28 + ulen)?.to_vec();
                if pd.username != user {
                    (payload::RAKP2, vec![q[0], 0x0D, 0, 0])
                } else {
                    let inputs = RakpInputs {
                        hash: suite.hash,
                        console_sid: pd.console_sid,
                        bmc_sid,
                        console_rand: &pd.rm,
                        bmc_rand: &pd.rc,
                        bmc_guid: &GUID,
                        role: pd.role,
                        username: &pd.username,
                    };
                    let mut r = vec![q[0], 0, 0, 0];
                    r.extend_from_slice(&pd.console_sid.to_le_bytes());
                    r.extend_from_slice(&pd.rc);
                    r.extend_from_slice(&GUID);
                    r.extend_from_slice(&inputs.rakp2_auth_code(password));
                    (payload::RAKP2, r)
                }
            }
            payload::RAKP3 if q.len() >= 8 => {
                let bmc_sid = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
                let pd = pending.iter().find(|x| x.bmc_sid == bmc_sid)?;
                let inputs = RakpInputs {
                    hash: suite.hash,
                    console_sid: pd.console_sid,
                    bmc_sid,
                    console_rand: &pd.rm,
                    bmc_rand: &pd.rc,
                    bmc_guid: &GUID,
                    role: pd.role,
                    username: &pd.username,
                };
                let mut r = vec![q[0], 0, 0, 0];
                r.extend_from_slice(&pd.console_sid.to_le_bytes());
                if inputs.verify_rakp3(password, &q[8..]).is_err() {
                    r[1] = 0x0F;
                    (payload::RAKP4, r)
                } else {
                    let sik = inputs.sik(password);
                    r.extend_from_slice(&inputs.rakp4_icv(&sik));
                    seen.lock().unwrap().sessions_opened += 1;
                    sessions.lock().unwrap().push(Active {
                        console_sid: pd.console_sid,
                        bmc_sid,
                        keys: SessionKeys::derive(suite.hash, &sik),
                        out_seq: 0,
                    });
                    (payload::RAKP4, r)
                }
            }
            _ => return None,
        };
        return wire::encode_rmcp_plus(out.0, 0, 0, &out.1, None).ok();
    }
    // A packet of an established session: authenticated and encrypted.
    let mut sessions = sessions.lock().unwrap();
    let s = sessions.iter_mut().find(|s| s.bmc_sid == session_id)?;
    let d = wire::decode_rmcp_plus(p, Some(&s.keys)).ok()?;
    let m = wire::decode_message(&d.payload).ok()?;
    let mut seen = seen.lock().unwrap();
    if seen.drop_next > 0 {
        seen.drop_next -= 1;
        return None;
    }
    seen.commands.push((m.netfn, m.cmd, m.data.clone()));
    let data: Vec<u8> = match (m.netfn, m.cmd) {
        (0x06, 0x3B) => vec![0, m.data.first().copied().unwrap_or(4) & 0x0F],
        (0x06, 0x3C) => vec![0],
        (0x06, 0x01) => vec![
            0, 0x20, 0x01, 0x02, 0x15, 0x02, 0x01, 0x57, 0x01, 0x00, 0x34, 0x12,
        ],
        (0x00, 0x01) => vec![0, u8::from(seen.power_on), 0, 0],
        (0x00, 0x02) => {
            match m.data.first() {
                Some(0) | Some(5) => seen.power_on = false,
                Some(1) | Some(2) | Some(3) => seen.power_on = true,
                _ => {}
            }
            vec![0]
        }
        _ => vec![0xC1],
    };
    drop(seen);
    s.out_seq += 1;
    wire::encode_rmcp_plus(
        payload::IPMI,
        s.console_sid,
        s.out_seq,
        &rsp_msg(&m, &data),
        Some(&s.keys),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IpmiDriver, IpmiOptions};
    use anvil_power::{PowerAction, PowerDriver, PowerError, PowerState};
    use std::time::{Duration, Instant};

    fn opts(suites: &[u8]) -> IpmiOptions {
        IpmiOptions {
            cipher_suites: suites.to_vec(),
            call_timeout: Duration::from_secs(3),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_millis(400),
            ..IpmiOptions::default()
        }
    }

    async fn ipmitool_status(bmc: &FakeBmc, suite: u8) -> Option<String> {
        match crate::testing::tools_available() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => panic!("{e}"),
        }
        let out = tokio::process::Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-C",
                &suite.to_string(),
                "-N",
                "1",
                "-R",
                "2",
            ])
            .args([
                "-H",
                &bmc.addr.ip().to_string(),
                "-p",
                &bmc.addr.port().to_string(),
            ])
            .args(["-U", "admin", "-E", "chassis", "power", "status"])
            .env("IPMI_PASSWORD", "s3cret")
            .output()
            .await
            .unwrap();
        Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// ipmitool's own cipher-suite-17 code accepts our RAKP 2 and RAKP 4,
    /// and our checks accept its RAKP 3 and its HMAC-SHA256-128 /
    /// AES-CBC-128 packets: the SHA-256 key derivation is interoperable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ipmitool_logs_in_with_suite_17_to_our_sha256_code() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Normal, "admin", "s3cret").await;
        bmc.seen.lock().unwrap().power_on = true;
        let Some(out) = ipmitool_status(&bmc, 17).await else {
            return;
        };
        assert!(out.contains("Chassis Power is on"), "{out}");
        let seen = bmc.seen.lock().unwrap();
        assert_eq!(seen.sessions_opened, 1);
        assert!(seen.commands.iter().any(|c| (c.0, c.1) == (0x00, 0x01)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ipmitool_logs_in_with_suite_3_to_our_sha1_code() {
        let bmc = FakeBmc::start(SUITE_3, Mode::Normal, "admin", "s3cret").await;
        let Some(out) = ipmitool_status(&bmc, 3).await else {
            return;
        };
        assert!(out.contains("Chassis Power is off"), "{out}");
    }

    #[tokio::test]
    async fn native_driver_speaks_suite_17_and_keeps_its_session() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Normal, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[17, 3])).unwrap();
        assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
        d.power(PowerAction::On).await.unwrap();
        assert_eq!(d.power_state().await.unwrap(), PowerState::On);
        assert_eq!(d.cipher_suite().await, Some(17));
        let id = d.device_id().await.unwrap();
        assert_eq!((id.firmware.as_str(), id.manufacturer_id), ("2.15", 343));
        let seen = bmc.seen.lock().unwrap();
        assert_eq!(seen.sessions_opened, 1, "one session for all calls");
        assert_eq!(seen.proposals, [(3, 4, 1)]);
        assert_eq!(
            (seen.commands[0].0, seen.commands[0].1),
            (0x06, 0x3B),
            "privilege first"
        );
        assert_eq!(seen.commands[0].2, [4], "ADMINISTRATOR");
    }

    #[tokio::test]
    async fn falls_back_from_17_to_3_but_never_further() {
        let bmc = FakeBmc::start(SUITE_3, Mode::Normal, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[17, 3])).unwrap();
        d.power_state().await.unwrap();
        assert_eq!(d.cipher_suite().await, Some(3));
        // Reconnecting tries the suite that worked first.
        bmc.forget_sessions();
        d.close().await;
        d.power_state().await.unwrap();
        assert_eq!(
            bmc.seen.lock().unwrap().proposals,
            [(3, 4, 1), (1, 1, 1), (1, 1, 1)]
        );
    }

    #[tokio::test]
    async fn a_bmc_offering_only_suite_0_is_refused() {
        let bmc = FakeBmc::start(SUITE_3, Mode::OnlySuite0, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[17, 3])).unwrap();
        let e = d.power_state().await.unwrap_err();
        assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
        assert!(e.to_string().contains("never falls back"), "{e}");
        let seen = bmc.seen.lock().unwrap();
        assert!(!seen.proposals.contains(&(0, 0, 0)), "{:?}", seen.proposals);
        assert!(seen.commands.is_empty());
    }

    #[tokio::test]
    async fn a_bmc_answering_with_weaker_algorithms_is_refused() {
        let bmc = FakeBmc::start(SUITE_3, Mode::Downgrade, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[3])).unwrap();
        let e = d.power_state().await.unwrap_err();
        assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
        assert!(e.to_string().contains("0/0/0"), "{e}");
        assert_eq!(bmc.seen.lock().unwrap().sessions_opened, 0);
    }

    #[tokio::test]
    async fn wrong_password_is_auth_failed_and_not_echoed() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Normal, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "Wr0ngPassw0rd"), opts(&[17])).unwrap();
        let e = d.power_state().await.unwrap_err();
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
        let s = format!("{e} {e:?}");
        assert!(!s.contains("Wr0ngPassw0rd") && !s.contains("s3cret"), "{s}");
        let d = IpmiDriver::new(&bmc.credentials("nobody", "s3cret"), opts(&[17])).unwrap();
        let e = d.power_state().await.unwrap_err();
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
    }

    #[tokio::test]
    async fn lost_packets_are_retransmitted_and_lost_sessions_reopened() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Normal, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[17])).unwrap();
        d.power_state().await.unwrap();
        bmc.seen.lock().unwrap().drop_next = 1;
        d.power_state().await.unwrap();
        assert_eq!(
            bmc.seen.lock().unwrap().sessions_opened,
            1,
            "a retransmission was enough"
        );
        bmc.forget_sessions(); // the BMC rebooted
        let t = Instant::now();
        assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(bmc.seen.lock().unwrap().sessions_opened, 2);
    }

    #[tokio::test]
    async fn an_idle_session_is_replaced_and_its_slot_given_back() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Normal, "admin", "s3cret").await;
        let o = IpmiOptions {
            session_idle_limit: Duration::from_millis(100),
            ..opts(&[17])
        };
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), o).unwrap();
        d.power_state().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        d.power_state().await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "no wait for silence"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = bmc.seen.lock().unwrap();
        assert_eq!(seen.sessions_opened, 2);
        assert!(
            seen.commands.iter().any(|c| (c.0, c.1) == (0x06, 0x3C)),
            "Close Session sent"
        );
    }

    #[tokio::test]
    async fn a_silent_bmc_times_out_within_the_bound() {
        let bmc = FakeBmc::start(SUITE_17, Mode::Silent, "admin", "s3cret").await;
        let d = IpmiDriver::new(&bmc.credentials("admin", "s3cret"), opts(&[17])).unwrap();
        let t = Instant::now();
        let e = d.power_state().await.unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, PowerError::Timeout { .. }), "{e}");
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_millis(4000),
            "{took:?}"
        );
    }
}
