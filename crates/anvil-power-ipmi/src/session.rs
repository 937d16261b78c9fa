//! The RMCP+ client: session establishment (Get Channel Authentication
//! Capabilities, Open Session, RAKP 1–4, Set Session Privilege Level) and
//! authenticated, encrypted request/response on an open session, with
//! retransmission on UDP loss.

use crate::crypto::{self, Hash, RakpInputs, SessionKeys};
use crate::wire::{self, payload};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Why an exchange failed, before the driver adds the BMC's address.
#[derive(Debug)]
pub(crate) enum Fail {
    /// No answer before the call's deadline.
    Timeout,
    /// The network said no (ICMP port unreachable, no route, no socket).
    Unreachable(String),
    /// The BMC refused the user name or password (or Anvil refused the
    /// BMC's proof that it knows them).
    Auth,
    NotSupported(String),
    Protocol(String),
    /// A non-zero IPMI completion code.
    Completion {
        netfn: u8,
        cmd: u8,
        code: u8,
    },
}

/// A cipher suite Anvil runs: always with authentication, integrity and
/// confidentiality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suite {
    pub id: u8,
    pub hash: Hash,
    /// Algorithm numbers proposed in Open Session (§13.28).
    pub auth_alg: u8,
    pub integrity_alg: u8,
    pub conf_alg: u8,
}

pub(crate) const SUITE_3: Suite = Suite {
    id: 3,
    hash: Hash::Sha1,
    auth_alg: 0x01,      // RAKP-HMAC-SHA1
    integrity_alg: 0x01, // HMAC-SHA1-96
    conf_alg: 0x01,      // AES-CBC-128
};

pub(crate) const SUITE_17: Suite = Suite {
    id: 17,
    hash: Hash::Sha256,
    auth_alg: 0x03,      // RAKP-HMAC-SHA256
    integrity_alg: 0x04, // HMAC-SHA256-128
    conf_alg: 0x01,      // AES-CBC-128
};

/// Checks a configured cipher suite ID. Suites without authentication or
/// integrity are refused outright, whatever a BMC offers: with suite 0 a
/// BMC accepts any password (ipmi_sim demonstrably does).
pub(crate) fn suite_by_id(id: u8) -> Result<Suite, String> {
    match id {
        3 => Ok(SUITE_3),
        17 => Ok(SUITE_17),
        0 => Err(
            "cipher suite 0 has no authentication, integrity or encryption (any password is \
             accepted): Anvil refuses it"
                .into(),
        ),
        1 | 6 | 15 => Err(format!(
            "cipher suite {id} has no integrity protection: Anvil refuses it"
        )),
        _ => Err(format!(
            "cipher suite {id} is not supported: use 17 (SHA-256) or 3 (SHA-1), both with \
             AES-CBC-128"
        )),
    }
}

/// Retransmission schedule: wait `initial` for an answer, then twice as
/// long, up to `max`, until the call's deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub initial: Duration,
    pub max: Duration,
}

pub(crate) struct Login<'a> {
    pub username: &'a [u8],
    pub password: &'a [u8],
    /// Requested privilege: 3 = OPERATOR, 4 = ADMINISTRATOR.
    pub privilege: u8,
}

/// Everything the request loop mutates, apart from the socket.
struct Keyed {
    console_sid: u32,
    bmc_sid: u32,
    keys: SessionKeys,
    out_seq: u32,
    replay: wire::ReplayWindow,
}

/// An established, authenticated and encrypted RMCP+ session.
pub(crate) struct Session {
    sock: UdpSocket,
    st: Keyed,
    rq_seq: u8,
    pub suite: Suite,
    pub last_used: Instant,
}

/// Sends `packet()` until `accept` recognises an answer, retransmitting on
/// the `retry` schedule (a new packet each time, so session sequence
/// numbers advance), for at most `max_sends` transmissions and never past
/// `deadline`. Packets `accept` does not recognise (late answers to
/// earlier requests, forgeries, other sessions) are dropped silently.
async fn exchange<S, T>(
    sock: &UdpSocket,
    state: &mut S,
    deadline: Instant,
    retry: Retry,
    max_sends: u32,
    mut packet: impl FnMut(&mut S) -> Result<Vec<u8>, Fail>,
    mut accept: impl FnMut(&mut S, &[u8]) -> Option<Result<T, Fail>>,
) -> Result<T, Fail> {
    let mut wait = retry.initial;
    let mut refused: Option<String> = None;
    let mut buf = vec![0u8; 2048];
    for _ in 0..max_sends {
        if Instant::now() >= deadline {
            break;
        }
        let p = packet(state)?;
        if let Err(e) = sock.send(&p).await {
            // ICMP errors from earlier sends surface here on a connected
            // socket; the BMC may just be rebooting, so keep trying.
            if is_unreachable(&e) {
                refused = Some(e.to_string());
            } else {
                return Err(Fail::Unreachable(e.to_string()));
            }
        }
        let until = (Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) if is_unreachable(&e) => {
                    refused = Some(e.to_string());
                    tokio::time::sleep_until(until).await;
                    break;
                }
                Ok(Err(e)) => return Err(Fail::Unreachable(e.to_string())),
                Ok(Ok(n)) => {
                    if let Some(r) = accept(state, &buf[..n]) {
                        return r;
                    }
                }
            }
        }
        wait = (wait * 2).min(retry.max);
    }
    Err(match refused {
        Some(reason) if Instant::now() >= deadline => Fail::Unreachable(reason),
        _ => Fail::Timeout,
    })
}

fn is_unreachable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable
    )
}

fn random_u32_nonzero() -> Result<u32, Fail> {
    loop {
        let mut b = [0u8; 4];
        crypto::fill_random(&mut b).map_err(|_| Fail::Protocol("no OS randomness".into()))?;
        let v = u32::from_le_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

fn random_tag() -> Result<u8, Fail> {
    Ok(random_u32_nonzero()? as u8)
}

/// RMCP+ status codes (§13.24) as words, for error messages.
pub(crate) fn rmcp_status_text(code: u8) -> &'static str {
    match code {
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session ID",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session ID",
        0x09 => "invalid role",
        0x0A => "unauthorized role or privilege level requested",
        0x0B => "insufficient resources to create a session at the requested role",
        0x0C => "invalid name length",
        0x0D => "unauthorized name",
        0x0E => "unauthorized GUID",
        0x0F => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

/// Status codes with which a BMC says "not these algorithms": the next
/// configured suite may still work.
fn is_algorithm_refusal(code: u8) -> bool {
    matches!(code, 0x04 | 0x05 | 0x06 | 0x07 | 0x10 | 0x11)
}

/// Status codes of RAKP 2/4 that mean the BMC refused the login itself.
/// 0x12 is what ipmi_sim (and others) answer for an unknown user name.
fn is_login_refusal(code: u8) -> bool {
    matches!(code, 0x09 | 0x0A | 0x0C | 0x0D | 0x0E | 0x0F | 0x12)
}

impl Session {
    /// Opens a session with the first of `suites` the BMC accepts.
    pub(crate) async fn open(
        addr: SocketAddr,
        login: &Login<'_>,
        suites: &[Suite],
        deadline: Instant,
        retry: Retry,
    ) -> Result<Session, Fail> {
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| Fail::Unreachable(format!("cannot open a UDP socket: {e}")))?;
        sock.connect(addr)
            .await
            .map_err(|e| Fail::Unreachable(e.to_string()))?;

        check_channel_auth_caps(&sock, login.privilege, deadline, retry).await?;

        let mut refusals = Vec::new();
        let mut opened = None;
        for suite in suites {
            match open_session(&sock, suite, deadline, retry).await? {
                OpenOutcome::Accepted {
                    console_sid,
                    bmc_sid,
                } => {
                    opened = Some((*suite, console_sid, bmc_sid));
                    break;
                }
                OpenOutcome::Refused(code) => {
                    tracing::debug!(
                        suite = suite.id,
                        status = code,
                        "BMC refused cipher suite: {}",
                        rmcp_status_text(code)
                    );
                    refusals.push(format!("{} ({})", suite.id, rmcp_status_text(code)));
                }
            }
        }
        let Some((suite, console_sid, bmc_sid)) = opened else {
            return Err(Fail::NotSupported(format!(
                "an authenticated, integrity-protected and encrypted IPMI session: it refused \
                 cipher suite {}; Anvil never falls back to suites without authentication or \
                 integrity such as 0",
                refusals.join(", suite ")
            )));
        };

        let keys = rakp(&sock, login, suite, console_sid, bmc_sid, deadline, retry).await?;
        let mut session = Session {
            sock,
            st: Keyed {
                console_sid,
                bmc_sid,
                keys,
                out_seq: 0,
                replay: wire::ReplayWindow::default(),
            },
            rq_seq: 0,
            suite,
            last_used: Instant::now(),
        };

        // RAKP only caps the privilege; sessions start at USER on many BMCs
        // (ipmi_sim included), where Chassis Control answers 0xD4.
        let rsp = session
            .command(0x06, 0x3B, &[login.privilege], deadline, retry, u32::MAX)
            .await;
        match rsp {
            Ok(_) => {}
            Err(Fail::Completion { code, .. }) => {
                return Err(Fail::Protocol(format!(
                    "the BMC refused privilege level {} for this user (completion code \
                     0x{code:02X}: {})",
                    privilege_name(login.privilege),
                    crate::completion_text(code)
                )));
            }
            Err(e) => return Err(e),
        }
        Ok(session)
    }

    /// Sends one IPMI request on the session and returns the response data
    /// after a zero completion code.
    pub(crate) async fn command(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        deadline: Instant,
        retry: Retry,
        max_sends: u32,
    ) -> Result<Vec<u8>, Fail> {
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        let rq_seq = self.rq_seq;
        // The same rqSeq on every retransmission lets a BMC recognise a
        // duplicate; the session sequence number still advances.
        let msg = wire::encode_request(netfn, cmd, rq_seq, data);
        let rsp = exchange(
            &self.sock,
            &mut self.st,
            deadline,
            retry,
            max_sends,
            |st| {
                st.out_seq = st.out_seq.wrapping_add(1).max(1);
                wire::encode_rmcp_plus(payload::IPMI, st.bmc_sid, st.out_seq, &msg, Some(&st.keys))
                    .map_err(|_| Fail::Protocol("no OS randomness for the AES IV".into()))
            },
            |st, pkt| {
                let d = wire::decode_rmcp_plus(pkt, Some(&st.keys)).ok()?;
                if d.payload_type != payload::IPMI || d.session_id != st.console_sid {
                    return None;
                }
                if !st.replay.accept(d.seq) {
                    return None;
                }
                let m = wire::decode_message(&d.payload).ok()?;
                if m.netfn != (netfn | 1) || m.cmd != cmd || m.rq_seq != rq_seq {
                    return None;
                }
                Some(Ok(m.data))
            },
        )
        .await?;
        self.last_used = Instant::now();
        match rsp.split_first() {
            None => Err(Fail::Protocol(format!(
                "empty response to NetFn 0x{netfn:02X} command 0x{cmd:02X}"
            ))),
            Some((0, rest)) => Ok(rest.to_vec()),
            Some((&code, _)) => Err(Fail::Completion { netfn, cmd, code }),
        }
    }

    /// Close Session, best effort: one packet, a short wait, errors ignored.
    /// BMCs have few session slots (often 4–16), so a discarded session
    /// should not linger until the BMC's inactivity timeout.
    pub(crate) async fn close(mut self) {
        let sid = self.st.bmc_sid.to_le_bytes();
        let retry = Retry {
            initial: Duration::from_millis(300),
            max: Duration::from_millis(300),
        };
        let deadline = Instant::now() + Duration::from_millis(300);
        let _ = self.command(0x06, 0x3C, &sid, deadline, retry, 1).await;
    }
}

pub(crate) fn privilege_name(p: u8) -> &'static str {
    match p {
        3 => "OPERATOR",
        4 => "ADMINISTRATOR",
        _ => "?",
    }
}

/// Get Channel Authentication Capabilities with the "IPMI v2.0 extended
/// data" bit, before anything else (as ipmitool does). A BMC that says it
/// cannot do IPMI v2.0 gets a clear NotSupported instead of a timeout on
/// Open Session.
async fn check_channel_auth_caps(
    sock: &UdpSocket,
    privilege: u8,
    deadline: Instant,
    retry: Retry,
) -> Result<(), Fail> {
    let msg = wire::encode_request(0x06, 0x38, 0, &[0x8E, privilege]);
    let data = exchange(
        sock,
        &mut (),
        deadline,
        retry,
        u32::MAX,
        |_| Ok(wire::encode_v15_sessionless(&msg)),
        |_, pkt| {
            let m = wire::decode_message(wire::decode_v15(pkt).ok()?).ok()?;
            (m.netfn == 0x07 && m.cmd == 0x38).then_some(Ok(m.data))
        },
    )
    .await?;
    match data.first() {
        Some(0) => {}
        // 0xCC: "invalid data field" for the extended-data bit = no IPMI v2.0.
        Some(0xCC) => {
            return Err(Fail::NotSupported(
                "IPMI v2.0 / RMCP+ (Get Channel Authentication Capabilities)".into(),
            ));
        }
        Some(&code) => {
            return Err(Fail::Protocol(format!(
                "Get Channel Authentication Capabilities failed: completion code 0x{code:02X} \
                 ({})",
                crate::completion_text(code)
            )));
        }
        None => {
            return Err(Fail::Protocol(
                "empty Get Channel Authentication Capabilities".into(),
            ));
        }
    }
    // Byte 2 bit 7: extended capabilities present; then byte 4 bit 1:
    // IPMI v2.0 connections supported.
    if let (Some(auth), Some(ext)) = (data.get(2), data.get(4))
        && auth & 0x80 != 0
        && ext & 0x02 == 0
    {
        return Err(Fail::NotSupported(
            "IPMI v2.0 / RMCP+ on this channel".into(),
        ));
    }
    Ok(())
}

enum OpenOutcome {
    Accepted { console_sid: u32, bmc_sid: u32 },
    Refused(u8),
}

async fn open_session(
    sock: &UdpSocket,
    suite: &Suite,
    deadline: Instant,
    retry: Retry,
) -> Result<OpenOutcome, Fail> {
    let console_sid = random_u32_nonzero()?;
    let tag = random_tag()?;
    let mut req = vec![tag, 0x00, 0, 0];
    // Requested maximum privilege 0 = "highest the proposed algorithms
    // allow"; the actual cap is set in RAKP 1 (ipmitool does the same).
    req.extend_from_slice(&console_sid.to_le_bytes());
    for (kind, alg) in [
        (0x00, suite.auth_alg),
        (0x01, suite.integrity_alg),
        (0x02, suite.conf_alg),
    ] {
        req.extend_from_slice(&[kind, 0, 0, 0x08, alg, 0, 0, 0]);
    }
    let rsp = exchange(
        sock,
        &mut (),
        deadline,
        retry,
        u32::MAX,
        |_| {
            wire::encode_rmcp_plus(payload::OPEN_SESSION_REQUEST, 0, 0, &req, None)
                .map_err(|_| Fail::Protocol("encoding Open Session".into()))
        },
        |_, pkt| {
            let d = wire::decode_rmcp_plus(pkt, None).ok()?;
            (d.payload_type == payload::OPEN_SESSION_RESPONSE && d.payload.first() == Some(&tag))
                .then_some(Ok(d.payload))
        },
    )
    .await?;
    let status = *rsp.get(1).unwrap_or(&0xFF);
    if status != 0 {
        if is_algorithm_refusal(status) {
            return Ok(OpenOutcome::Refused(status));
        }
        return Err(Fail::Protocol(format!(
            "Open Session refused: RMCP+ status 0x{status:02X} ({})",
            rmcp_status_text(status)
        )));
    }
    if rsp.len() < 36 {
        return Err(Fail::Protocol(format!(
            "Open Session Response too short ({} bytes)",
            rsp.len()
        )));
    }
    let echoed = u32::from_le_bytes([rsp[4], rsp[5], rsp[6], rsp[7]]);
    let bmc_sid = u32::from_le_bytes([rsp[8], rsp[9], rsp[10], rsp[11]]);
    if echoed != console_sid || bmc_sid == 0 {
        return Err(Fail::Protocol(
            "Open Session Response for another session".into(),
        ));
    }
    // The BMC must run exactly what was proposed. One that answers "OK"
    // with weaker algorithms (e.g. none/none/none) is refused, never used.
    let got = (rsp[16] & 0x3F, rsp[24] & 0x3F, rsp[32] & 0x3F);
    let want = (suite.auth_alg, suite.integrity_alg, suite.conf_alg);
    if got != want {
        return Err(Fail::NotSupported(format!(
            "cipher suite {}: it answered Open Session with authentication/integrity/\
             confidentiality algorithms {}/{}/{} instead of the proposed {}/{}/{}; Anvil refuses \
             such a session",
            suite.id, got.0, got.1, got.2, want.0, want.1, want.2
        )));
    }
    Ok(OpenOutcome::Accepted {
        console_sid,
        bmc_sid,
    })
}

/// RAKP messages 1–4: mutual proof of the password and the session keys.
async fn rakp(
    sock: &UdpSocket,
    login: &Login<'_>,
    suite: Suite,
    console_sid: u32,
    bmc_sid: u32,
    deadline: Instant,
    retry: Retry,
) -> Result<SessionKeys, Fail> {
    let mut rm = [0u8; 16];
    crypto::fill_random(&mut rm).map_err(|_| Fail::Protocol("no OS randomness".into()))?;
    // Name-only lookup (bit 4): the BMC finds the user by name and caps
    // the session at the requested privilege.
    let role = login.privilege | 0x10;
    let tag = random_tag()?;
    let mut r1 = vec![tag, 0, 0, 0];
    r1.extend_from_slice(&bmc_sid.to_le_bytes());
    r1.extend_from_slice(&rm);
    r1.extend_from_slice(&[role, 0, 0, login.username.len() as u8]);
    r1.extend_from_slice(login.username);
    let r2 = exchange(
        sock,
        &mut (),
        deadline,
        retry,
        u32::MAX,
        |_| {
            wire::encode_rmcp_plus(payload::RAKP1, 0, 0, &r1, None)
                .map_err(|_| Fail::Protocol("encoding RAKP 1".into()))
        },
        |_, pkt| {
            let d = wire::decode_rmcp_plus(pkt, None).ok()?;
            (d.payload_type == payload::RAKP2 && d.payload.first() == Some(&tag))
                .then_some(Ok(d.payload))
        },
    )
    .await?;
    let status = *r2.get(1).unwrap_or(&0xFF);
    if status != 0 {
        tracing::debug!(status, "RAKP 2: {}", rmcp_status_text(status));
        return Err(if is_login_refusal(status) {
            Fail::Auth
        } else {
            Fail::Protocol(format!(
                "RAKP 2 status 0x{status:02X} ({})",
                rmcp_status_text(status)
            ))
        });
    }
    let hl = suite.hash.len();
    if r2.len() < 40 + hl {
        return Err(Fail::Protocol(format!(
            "RAKP 2 too short ({} bytes)",
            r2.len()
        )));
    }
    if u32::from_le_bytes([r2[4], r2[5], r2[6], r2[7]]) != console_sid {
        return Err(Fail::Protocol("RAKP 2 for another session".into()));
    }
    let mut rc = [0u8; 16];
    rc.copy_from_slice(&r2[8..24]);
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&r2[24..40]);
    let inputs = RakpInputs {
        hash: suite.hash,
        console_sid,
        bmc_sid,
        console_rand: &rm,
        bmc_rand: &rc,
        bmc_guid: &guid,
        role,
        username: login.username,
    };
    // The BMC proves it knows the password before Anvil proves anything:
    // a wrong password (or an impostor BMC) stops here.
    if inputs
        .verify_rakp2(login.password, &r2[40..40 + hl])
        .is_err()
    {
        return Err(Fail::Auth);
    }
    // KG = Kuid: Anvil does not support BMCs configured with a separate
    // BMC key ("two-key login"); their RAKP 4 check fails → AuthFailed.
    let sik = inputs.sik(login.password);

    let tag = random_tag()?;
    let mut r3 = vec![tag, 0, 0, 0];
    r3.extend_from_slice(&bmc_sid.to_le_bytes());
    r3.extend_from_slice(&inputs.rakp3_auth_code(login.password));
    let r4 = exchange(
        sock,
        &mut (),
        deadline,
        retry,
        u32::MAX,
        |_| {
            wire::encode_rmcp_plus(payload::RAKP3, 0, 0, &r3, None)
                .map_err(|_| Fail::Protocol("encoding RAKP 3".into()))
        },
        |_, pkt| {
            let d = wire::decode_rmcp_plus(pkt, None).ok()?;
            (d.payload_type == payload::RAKP4 && d.payload.first() == Some(&tag))
                .then_some(Ok(d.payload))
        },
    )
    .await?;
    let status = *r4.get(1).unwrap_or(&0xFF);
    if status != 0 {
        tracing::debug!(status, "RAKP 4: {}", rmcp_status_text(status));
        return Err(if is_login_refusal(status) {
            Fail::Auth
        } else {
            Fail::Protocol(format!(
                "RAKP 4 status 0x{status:02X} ({})",
                rmcp_status_text(status)
            ))
        });
    }
    let il = suite.hash.icv_len();
    if r4.len() < 8 + il || u32::from_le_bytes([r4[4], r4[5], r4[6], r4[7]]) != console_sid {
        return Err(Fail::Protocol("RAKP 4 malformed".into()));
    }
    if inputs.verify_rakp4(&sik, &r4[8..8 + il]).is_err() {
        return Err(Fail::Auth);
    }
    Ok(SessionKeys::derive(suite.hash, &sik))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_suites_are_refused_by_id() {
        assert!(suite_by_id(0).unwrap_err().contains("suite 0"));
        for id in [1, 6, 15] {
            assert!(
                suite_by_id(id).unwrap_err().contains("no integrity"),
                "{id}"
            );
        }
        assert!(suite_by_id(2).unwrap_err().contains("not supported"));
        assert_eq!(suite_by_id(3).unwrap(), SUITE_3);
        assert_eq!(suite_by_id(17).unwrap(), SUITE_17);
    }
}
