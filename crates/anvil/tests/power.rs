//! Power control end to end: `anvil serve` with its real Redfish driver
//! against sushy-tools' emulator, driven through the CLI as a rack engineer
//! would (enroll, pxe-boot --wait, power status, rack up).

mod common;
#[path = "../../anvil-power-redfish/tests/support/sushy.rs"]
#[allow(dead_code)]
mod sushy;

use common::{Server, anvil_cmd, client};
use serde_json::{Value, json};
use std::process::Output;
use sushy::{FakeSystem, Sushy};

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const SYSTEMS: &[FakeSystem] = &[
    FakeSystem {
        uuid: "11111111-1111-1111-1111-111111111111",
        name: "node-a",
        power_on: false,
        macs: &["52:54:00:aa:00:01"],
        disk_bytes: None,
    },
    FakeSystem {
        uuid: "22222222-2222-2222-2222-222222222222",
        name: "node-b",
        power_on: false,
        macs: &["52:54:00:aa:00:02"],
        disk_bytes: None,
    },
];

#[test]
fn enroll_pxe_boot_and_status_against_sushy_tools() {
    if sushy::skipped() {
        return;
    }
    let bmc = Sushy::start(&SYSTEMS[..1], &[("admin", "bmc-SECRET-pw")]);
    let s = Server::start();
    let out = anvil_cmd(&s)
        .args([
            "enroll",
            "--driver",
            "redfish",
            "--address",
            &bmc.address(),
            "--username",
            "admin",
            "--password-env",
            "BMCPW",
            "--hostname",
            "sushy-a",
            "-o",
            "json",
        ])
        .env("BMCPW", "bmc-SECRET-pw")
        .output()
        .unwrap();
    let m = ok_json(&out, "enroll");
    assert_eq!(m["hostname"], "sushy-a");
    assert_eq!(m["interfaces"][0]["mac"], "52:54:00:aa:00:01", "{m}");
    assert_eq!(m["bmc"]["has_password"], true);
    // Enrolling the same BMC again changes nothing.
    let again = anvil_cmd(&s)
        .args([
            "enroll",
            "--driver",
            "redfish",
            "--address",
            &bmc.address(),
            "--username",
            "admin",
            "--password-env",
            "BMCPW",
            "-o",
            "json",
        ])
        .env("BMCPW", "bmc-SECRET-pw")
        .output()
        .unwrap();
    assert_eq!(ok_json(&again, "enroll again")["id"], m["id"]);

    let out = anvil_cmd(&s)
        .args(["pxe-boot", "sushy-a", "--wait", "-o", "json"])
        .output()
        .unwrap();
    let jobs = ok_json(&out, "pxe-boot --wait");
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
    assert_eq!(jobs[0]["result"]["power_state"], "on");
    let out = anvil_cmd(&s)
        .args(["power", "status", "sushy-a", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(ok_json(&out, "power status")[0]["power_state"], "on");
    let out = anvil_cmd(&s)
        .args(["power", "off", "sushy-a", "--wait", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        ok_json(&out, "power off")[0]["result"]["power_state"],
        "off"
    );
    // Power on with a one-time PXE boot (no state read first).
    let out = anvil_cmd(&s)
        .args([
            "power",
            "on",
            "--pxe-once",
            "sushy-a",
            "--wait",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let jobs = ok_json(&out, "power on --pxe-once");
    assert_eq!(jobs[0]["kind"], "pxe-power-on", "{jobs}");
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
    assert_eq!(jobs[0]["result"]["power_state"], "on");

    // The BMC password is in no answer, event or job, and not in the log.
    let c = client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let everything = rt.block_on(async {
        let mut all = String::new();
        for path in ["/machines", "/events?limit=1000", "/jobs"] {
            all.push_str(
                &c.get(s.api(path))
                    .bearer_auth(&s.token)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
        }
        all
    });
    assert!(everything.contains("power.pxe-boot"), "{everything}");
    assert!(!everything.contains("bmc-SECRET-pw"));
    let log = std::fs::read_to_string(s.data_path().join("serve.log")).unwrap();
    assert!(!log.contains("bmc-SECRET-pw"));

    // A wrong password is a BMC error (502, exit code 8) that names the BMC, not the password.
    let out = anvil_cmd(&s)
        .args([
            "enroll",
            "--driver",
            "redfish",
            "--address",
            &format!("{}/", bmc.address()),
            "--username",
            "admin",
            "--password-env",
            "BMCPW",
        ])
        .env("BMCPW", "wrong-SECRET")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-SECRET"));
}

#[test]
fn rack_up_enrols_boots_and_waits_for_discovery() {
    if sushy::skipped() {
        return;
    }
    let bmc = Sushy::start(SYSTEMS, &[("admin", "rack-pw")]);
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "rack-pw\n").unwrap();
    // Both systems live behind one emulator; sushy picks the first system
    // for an address, so each line addresses its system by URL.
    let manifest = dir.path().join("rack.csv");
    std::fs::write(
        &manifest,
        format!(
            "driver,bmc_address,bmc_port,username,password_file,password_env,hostname,rack,position\n\
             redfish,{addr},,admin,{pw},,rack-a,R1,U01\n",
            addr = bmc.address(),
            pw = pw.display()
        ),
    )
    .unwrap();
    let out = anvil_cmd(&s)
        .args(["rack", "up"])
        .arg(&manifest)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("enroll, pxe-boot, wait for discovery"));
    let c = client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(async {
            c.get(s.api("/machines"))
                .bearer_auth(&s.token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })["total"],
        0,
        "a dry run changes nothing"
    );

    // The discovery ramdisk's call-home is played by the test, once the
    // machine was PXE-booted.
    let url = s.api("/discovery/callhome");
    let jobs_url = s.api("/machines/rack-a/jobs");
    let token = s.token.clone();
    let caller = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = client();
            for _ in 0..240 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                // The machine "boots" once its pxe-boot job has succeeded.
                let Ok(r) = c.get(&jobs_url).bearer_auth(&token).send().await else {
                    continue;
                };
                let Ok(jobs) = r.json::<Value>().await else {
                    continue;
                };
                let booted = jobs["items"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|j| j["kind"] == "pxe-boot" && j["status"] == "succeeded")
                });
                if booted {
                    let r = c
                        .post(&url)
                        .json(&json!({"mac": "52:54:00:aa:00:01", "ip": "10.77.0.50"}))
                        .send()
                        .await;
                    return r.map(|r| r.status().is_success()).unwrap_or(false);
                }
            }
            false
        })
    });
    let out = anvil_cmd(&s)
        .args(["rack", "up"])
        .arg(&manifest)
        .args(["--timeout", "90", "-o", "json"])
        .output()
        .unwrap();
    assert!(caller.join().unwrap());
    let summary = ok_json(&out, "rack up");
    assert_eq!(summary[0]["hostname"], "rack-a", "{summary}");
    assert_eq!(summary[0]["enrolled"], "created");
    assert_eq!(summary[0]["discovered"], true, "{summary}");
    // Run again: idempotent and resumable; nothing is booted twice.
    let out = anvil_cmd(&s)
        .args(["rack", "up"])
        .arg(&manifest)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let again = ok_json(&out, "rack up again");
    assert_eq!(again[0]["enrolled"], "existing");
    assert_eq!(again[0]["pxe_boot"], "skipped (already discovered)");
    let tags = rt.block_on(async {
        c.get(s.api("/machines/rack-a"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })["tags"]
        .clone();
    assert_eq!(tags, json!(["position:U01", "rack:R1"]));
}
