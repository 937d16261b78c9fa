//! The CLI, run as a program against a real server: output formats and the
//! exit codes shell scripts rely on.

mod common;

use common::{ANVIL, Server, anvil_cmd};
use serde_json::{Value, json};
use std::process::{Command, Output};

fn run(s: &Server, args: &[&str]) -> Output {
    anvil_cmd(s).args(args).output().unwrap()
}

fn ok_json(s: &Server, args: &[&str]) -> Value {
    let out = run(s, args);
    assert!(
        out.status.success(),
        "anvil {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "anvil {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn machine_commands_and_exit_codes() {
    let s = Server::start();
    let m = ok_json(
        &s,
        &[
            "machine",
            "add",
            "--hostname",
            "cli-01",
            "--mac",
            "52:54:00:aa:00:01",
            "--tag",
            "rack1",
            "--arch",
            "amd64",
            "-o",
            "json",
        ],
    );
    assert_eq!(m["hostname"], "cli-01");
    assert_eq!(m["interfaces"][0]["mac"], "52:54:00:aa:00:01");
    let shown = ok_json(&s, &["machine", "show", "cli-01", "--output", "json"]);
    assert_eq!(shown["id"], m["id"]);

    let list = ok_json(&s, &["machine", "list", "--tag", "rack1", "-o", "json"]);
    assert_eq!(list["total"], 1);
    let yaml = run(&s, &["machine", "list", "-o", "yaml"]);
    assert!(yaml.status.success());
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("hostname: cli-01"));
    let table = run(&s, &["machine", "list"]);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("HOSTNAME") && t.contains("cli-01") && t.contains("new"),
        "{t}"
    );

    // Duplicate → 4 (conflict), naming the existing machine.
    let dup = run(
        &s,
        &[
            "machine",
            "add",
            "--hostname",
            "cli-01",
            "--mac",
            "52:54:00:aa:00:02",
        ],
    );
    assert_eq!(code(&dup), 4, "{}", String::from_utf8_lossy(&dup.stderr));
    assert!(String::from_utf8_lossy(&dup.stderr).contains(m["id"].as_str().unwrap()));
    // Not found → 3.
    assert_eq!(code(&run(&s, &["machine", "show", "nope"])), 3);
    // Bad input caught locally → 2.
    assert_eq!(
        code(&run(
            &s,
            &["machine", "add", "--hostname", "x", "--mac", "zz"]
        )),
        2
    );
    // Illegal transition → 4.
    assert_eq!(
        code(&run(
            &s,
            &["machine", "edit", "cli-01", "--set-state", "deployed"]
        )),
        4
    );
    let edited = ok_json(
        &s,
        &[
            "machine",
            "edit",
            "cli-01",
            "--vendor",
            "Dell",
            "--set-state",
            "broken",
            "--reason",
            "fan",
            "-o",
            "json",
        ],
    );
    assert_eq!(edited["vendor"], "Dell");
    assert_eq!(edited["state"], "broken");

    // Authentication → 5; unreachable server → 6.
    let out = Command::new(ANVIL)
        .args(["machine", "list"])
        .env("ANVIL_URL", &s.url)
        .env("ANVIL_TOKEN", "anvil_wrong")
        .output()
        .unwrap();
    assert_eq!(code(&out), 5);
    let out = Command::new(ANVIL)
        .args(["machine", "list"])
        .env("ANVIL_URL", &s.url)
        .env_remove("ANVIL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(code(&out), 5);
    let out = Command::new(ANVIL)
        .args(["machine", "list"])
        .env("ANVIL_URL", "http://127.0.0.1:9")
        .env("ANVIL_TOKEN", &s.token)
        .output()
        .unwrap();
    assert_eq!(code(&out), 6);

    // rm, then rm again → 3 (already gone).
    assert!(run(&s, &["machine", "rm", "cli-01"]).status.success());
    assert_eq!(code(&run(&s, &["machine", "rm", "cli-01"])), 3);
}

#[test]
fn tokens_and_users() {
    let s = Server::start();
    let t = ok_json(&s, &["token", "create", "ci", "-o", "json"]);
    let secret = t["secret"].as_str().unwrap();
    assert!(secret.starts_with("anvil_"));
    let list = ok_json(&s, &["token", "list", "-o", "json"]);
    assert!(list.as_array().unwrap().iter().any(|x| x["name"] == "ci"));
    assert!(!list.to_string().contains(secret));
    assert!(
        run(&s, &["token", "revoke", t["id"].as_str().unwrap()])
            .status
            .success()
    );
    let out = Command::new(ANVIL)
        .args(["machine", "list"])
        .env("ANVIL_URL", &s.url)
        .env("ANVIL_TOKEN", secret)
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "a revoked token is refused");

    let pw = s.data_path().join("pw");
    std::fs::write(&pw, "operator-password\n").unwrap();
    let out = run(
        &s,
        &[
            "user",
            "add",
            "operator",
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        code(&run(
            &s,
            &[
                "user",
                "add",
                "operator",
                "--password-file",
                pw.to_str().unwrap()
            ]
        )),
        4
    );
    let out = anvil_cmd(&s)
        .args(["user", "passwd", "operator", "--password-env", "NEWPW"])
        .env("NEWPW", "another-password")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn local_token_bootstrap_without_a_name() {
    let s = Server::start();
    // The exact form automation uses.
    let out = Command::new(ANVIL)
        .args(["token", "create", "--local", "--data-dir"])
        .arg(s.data_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let secret = text.lines().last().unwrap().trim();
    assert!(secret.starts_with("anvil_"), "{text}");
    let out = Command::new(ANVIL)
        .args(["machine", "list"])
        .env("ANVIL_URL", &s.url)
        .env("ANVIL_TOKEN", secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    // No database there → a clear error, exit 2.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(ANVIL)
        .args(["token", "create", "--local", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
}

#[test]
fn config_check() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/anvil.toml"
    );
    let out = Command::new(ANVIL)
        .args(["config", "check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[http]") && text.contains("listen = \"0.0.0.0:8080\""),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\nlisten = \"127.0.0.1:1\"\nport = 80\n").unwrap();
    let out = Command::new(ANVIL)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // serve refuses it too, before touching anything.
    let out = Command::new(ANVIL)
        .args(["serve", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(!dir.path().join("d").exists());
}

// ---------------------------------------------------------------- deployment

/// The agent of a machine's current run over HTTP, with the per-boot token
/// of its iPXE script, as the ramdisk's agent would.
struct HttpAgent {
    c: reqwest::Client,
    base: String,
    token: String,
}

impl HttpAgent {
    async fn boot(s: &Server, mac: &str) -> HttpAgent {
        let c = common::client();
        let script = c
            .get(format!("{}/boot/{mac}.ipxe", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no anvil.token in {script}"))
            .to_string();
        let a = HttpAgent {
            c,
            base: s.api("/agent"),
            token,
        };
        let reg = a
            .call("/register", json!({"mac": mac, "agent_version": "0.1.0"}))
            .await;
        assert!(reg["run_id"].is_string(), "{reg}");
        a
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let r = self
            .c
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    }

    /// Runs every step it is given, the image write with progress reports;
    /// `fail` fails the step of that kind instead. Returns the kinds run and
    /// the final `next` answer.
    async fn run_steps(&self, fail: Option<&str>) -> (Vec<String>, Value) {
        let mut kinds = Vec::new();
        loop {
            let next = self.call("/next", Value::Null).await;
            let Some(step) = next.get("step") else {
                return (kinds, next);
            };
            let kind = step["kind"].as_str().unwrap().to_string();
            let path = format!("/steps/{}/report", step["id"].as_str().unwrap());
            self.call(&path, json!({"seq": 1, "status": "started"}))
                .await;
            let mut seq = 2;
            if kind == "write_image" {
                for done in [1u64 << 20, 3 << 20] {
                    self.call(
                        &path,
                        json!({"seq": seq, "status": "progress", "progress": {"done": done, "total": 4u64 << 20}}),
                    )
                    .await;
                    seq += 1;
                    // Long enough for `--wait` to see it.
                    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
                }
            }
            let status = if fail == Some(kind.as_str()) {
                json!({"seq": seq, "status": "failed", "message": "disk vda not found"})
            } else {
                json!({"seq": seq, "status": "succeeded", "message": format!("{kind} done")})
            };
            self.call(&path, status).await;
            kinds.push(kind);
        }
    }
}

/// A child `anvil` command, read when it ends.
fn spawn(s: &Server, args: &[&str]) -> std::process::Child {
    anvil_cmd(s)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Its output once it exits; killed (by its PID) if it has not within a
/// minute, so a `--wait` that never ends fails the test instead of hanging it.
async fn finished(child: std::process::Child) -> Output {
    let pid = child.id().to_string();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(std::time::Duration::from_secs(60), waiting).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("anvil (pid {pid}) did not exit within 60 s");
        }
    }
}

/// Waits until the machine's newest run is running (the action's POST is
/// done and the iPXE script carries its token).
async fn wait_run(s: &Server, host: &str, purpose: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = ok_json(s, &["machine", "show", host, "-o", "json"]);
        let runs: Value = common::client()
            .get(s.api(&format!("/machines/{host}/commissioning-runs")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let newest = &runs["items"][0];
        if newest["purpose"] == purpose && newest["state"] == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running {purpose} run for {host}: {v} {runs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_release_and_rescue_through_the_cli() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut disk = vec![0u8; 4 << 20];
    for (i, b) in disk[100_000..300_000].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(p("cli-img.raw"), &disk).unwrap();
    let img = ok_json(
        &s,
        &[
            "image",
            "import",
            &p("cli-img.raw"),
            "--name",
            "cli-img",
            "--firmware",
            "bios",
            "-o",
            "json",
        ],
    );
    assert_eq!(img["name"], "cli-img", "{img}");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
    std::fs::write(p("id.pub"), format!("{key}\n")).unwrap();
    std::fs::write(p("user-data"), "#cloud-config\nruncmd: [touch /tmp/hi]\n").unwrap();
    std::fs::write(p("huge"), vec![b'#'; 64 * 1024 + 1]).unwrap();
    let mac = "52:54:00:de:0c:01";
    let host = "cli-dep-01";
    ok_json(
        &s,
        &[
            "machine",
            "add",
            "--hostname",
            host,
            "--mac",
            mac,
            "-o",
            "json",
        ],
    );

    // Checked before anything is sent: exit 2, the machine untouched.
    for (args, want) in [
        (
            vec!["--ssh-key", "/nonexistent/id.pub"],
            "cannot read --ssh-key /nonexistent/id.pub",
        ),
        (vec!["--root-disk", "biggest"], "root disk hint"),
        (vec!["--user-data", &p("huge")], "65537 bytes"),
        (
            vec!["--ssh-key", &p("user-data")],
            "line 2: unknown key type",
        ),
    ] {
        let mut line = vec!["machine", "deploy", host, "--image", "cli-img"];
        line.extend(args);
        let out = run(&s, &line);
        assert_eq!(code(&out), 2, "{line:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{line:?}: {}", stderr(&out));
    }
    // Lifecycle refusals: 4, with the state and a next step; unknown: 3.
    let out = run(&s, &["machine", "deploy", host, "--image", "cli-img"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "anvil: a machine in state new cannot move to deploying; commission it first: anvil machine commission {host}"
        )
    );
    let out = run(&s, &["machine", "release", host]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = run(&s, &["machine", "rescue", "--exit", host]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only a machine in rescue can leave it"),
        "{}",
        stderr(&out)
    );
    let out = run(&s, &["machine", "deploy", "nope", "--image", "cli-img"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let shown = ok_json(&s, &["machine", "show", host, "-o", "json"]);
    assert_eq!(shown["state"], "new");

    // Commissioned (no BMC: the agent is played here), it deploys.
    let out = run(&s, &["machine", "commission", host]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = HttpAgent::boot(&s, mac).await;
    let next = agent.call("/next", Value::Null).await;
    let step = &next["step"];
    let path = format!("/steps/{}/report", step["id"].as_str().unwrap());
    agent
        .call(&path, json!({"seq": 1, "status": "started"}))
        .await;
    agent
        .call(
            "/facts",
            json!({"step_id": step["id"], "facts": {
                "schema_version": 1,
                "cpu": {"sockets": 1, "cores": 1, "threads": 1},
                "memory": {"total_bytes": 1073741824u64},
                "disks": [{"name": "vda", "serial": "VD-1", "size_bytes": 10737418240u64, "transport": "virtio"}],
                "nics": [{"name": "ens3", "mac": mac, "link_up": true}],
                "boot": {"mode": "bios"}
            }}),
        )
        .await;
    agent
        .call(&path, json!({"seq": 2, "status": "succeeded"}))
        .await;

    // A hint that matches no disk is the server's 422: exit 2.
    let out = run(
        &s,
        &[
            "machine",
            "deploy",
            host,
            "--image",
            "cli-img",
            "--root-disk",
            "serial=NOPE",
        ],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("NOPE"), "{}", stderr(&out));

    let child = spawn(
        &s,
        &[
            "machine",
            "deploy",
            host,
            "--image",
            "cli-img",
            "--ssh-key",
            &p("id.pub"),
            "--user-data",
            &p("user-data"),
            "--root-disk",
            "serial=VD-1",
            "--wait",
        ],
    );
    wait_run(&s, host, "deployment").await;
    let agent = HttpAgent::boot(&s, mac).await;
    let (kinds, end) = agent.run_steps(None).await;
    assert_eq!(
        kinds,
        [
            "erase",
            "write_image",
            "grow_root",
            "cloud_init",
            "boot_entry"
        ]
    );
    assert_eq!(end["action"], "reboot", "{end}");
    let out = finished(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let write = table
        .lines()
        .find(|l| l.contains("write_image"))
        .unwrap_or("");
    assert!(
        write.contains("succeeded") && write.contains("write_image done"),
        "{table}"
    );
    assert!(
        stderr(&out).contains(&format!("{host}: deployment succeeded in")),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the machine is deployed"),
        "{}",
        stderr(&out)
    );

    // Rescue --wait ends when the rescue system is up; --exit goes back.
    let child = spawn(
        &s,
        &[
            "machine",
            "rescue",
            host,
            "--ssh-key",
            &p("id.pub"),
            "--wait",
            "-o",
            "json",
        ],
    );
    wait_run(&s, host, "rescue").await;
    let agent = HttpAgent::boot(&s, mac).await;
    let (kinds, _) = agent.run_steps(None).await;
    assert_eq!(kinds, ["rescue"]);
    let out = finished(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let run_json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run_json["purpose"], "rescue");
    assert_eq!(run_json["steps"][0]["params"]["ssh_keys"][0], key);
    let out = run(&s, &["machine", "rescue", "--exit", host]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = ok_json(&s, &["machine", "show", host, "-o", "json"]);
    assert_eq!(shown["state"], "deployed");

    // A release whose erase fails: exit 8 with the reason.
    let child = spawn(
        &s,
        &["machine", "release", host, "--erase", "secure", "--wait"],
    );
    wait_run(&s, host, "release").await;
    let agent = HttpAgent::boot(&s, mac).await;
    let (kinds, _) = agent.run_steps(Some("erase")).await;
    assert_eq!(kinds, ["erase"]);
    let out = finished(child).await;
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("anvil: {host}: release failed:"))
            && err.contains("disk vda not found"),
        "{err}"
    );
    let shown = ok_json(&s, &["machine", "show", host, "-o", "json"]);
    assert_eq!(shown["state"], "failed");

    // Released again from failed, quick erase this time: ready.
    let child = spawn(&s, &["machine", "release", host, "--wait"]);
    wait_run(&s, host, "release").await;
    let agent = HttpAgent::boot(&s, mac).await;
    let (kinds, end) = agent.run_steps(None).await;
    assert_eq!(kinds, ["erase"]);
    assert_eq!(end["action"], "poweroff", "{end}");
    let out = finished(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("release succeeded") && stderr(&out).contains("the machine is ready"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn instance_list_shows_the_live_leader() {
    let s = Server::start();
    let out = run(&s, &["instance", "list"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("STATUS"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].contains(" * ") && lines[1].contains("live") && lines[1].contains("leader"),
        "{text}"
    );
    let v = ok_json(&s, &["instance", "list", "-o", "json"]);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(
        (&items[0]["live"], &items[0]["leader"], &items[0]["this"]),
        (&json!(true), &json!(true), &json!(true))
    );
}
