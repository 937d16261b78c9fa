//! The CLI, run as a program against a real server: output formats and the
//! exit codes shell scripts rely on.

mod common;

use common::{ANVIL, Server, anvil_cmd};
use serde_json::Value;
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
