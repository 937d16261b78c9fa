//! The image library end to end: `anvil image import|list|rm` and
//! `/api/v1/images` against the real binary. Images are made here with
//! qemu-img (no internet for published cloud images; anvil-image's own tests
//! cover the formats in depth).
//!
//! Re-importing the same raw disk (even in another format) answers with the
//! existing image, 200 instead of 201, and stores nothing new.

mod common;

use common::{Server, anvil_cmd, client};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
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
    serde_json::from_slice(&out.stdout).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A 4 MiB disk with data here and there, as raw and as compressed qcow2.
fn make_disk(dir: &Path, name: &str, fill: u8) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let raw = dir.join(format!("{name}.raw"));
    let mut disk = vec![0u8; 4 << 20];
    for (i, b) in disk[100_000..400_000].iter_mut().enumerate() {
        *b = fill ^ (i % 251) as u8;
    }
    disk[3 << 20..(3 << 20) + 5000].fill(fill);
    std::fs::write(&raw, &disk).unwrap();
    let qcow2 = dir.join(format!("{name}.qcow2"));
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-O", "qcow2", p(&raw), p(&qcow2)])
        .status()
        .unwrap();
    assert!(st.success());
    (raw, qcow2, hex::encode(Sha256::digest(&disk)))
}

#[test]
fn import_list_reimport_and_rm_through_the_cli() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, qcow2, sha) = make_disk(dir.path(), "debian-12-genericcloud-amd64", 0x5a);

    let img = ok_json(
        &s,
        &[
            "image",
            "import",
            p(&qcow2),
            "--name",
            "deb12",
            "--os",
            "debian",
            "--release",
            "12",
            "-o",
            "json",
        ],
    );
    assert_eq!(img["name"], "deb12");
    assert_eq!(img["sha256"], sha.as_str());
    assert_eq!(img["source_format"], "qcow2");
    assert_eq!(img["raw_size"], 4 << 20);
    assert_eq!(
        (
            img["os"].as_str(),
            img["release"].as_str(),
            img["login_user"].as_str()
        ),
        (Some("debian"), Some("12"), Some("debian"))
    );
    assert_eq!(img["used_by"], json!([]));
    // Stored under the data directory by content, never in the database.
    let stored = s.data_path().join("images").join(format!("{sha}.raw.zst"));
    assert!(stored.is_file());
    assert!(
        s.data_path()
            .join("images")
            .join(format!("{sha}.zeromap"))
            .is_file()
    );

    // The same disk again, raw and xz-wrapped: the existing image, nothing new.
    let again = ok_json(
        &s,
        &[
            "image",
            "import",
            p(&raw),
            "--name",
            "another-name",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        (again["name"].as_str(), again["id"].clone()),
        (Some("deb12"), img["id"].clone())
    );
    Command::new("xz")
        .args(["-k", "-q", "-T1", p(&raw)])
        .status()
        .unwrap();
    let xz = ok_json(
        &s,
        &["image", "import", &format!("{}.xz", p(&raw)), "-o", "json"],
    );
    assert_eq!(xz["id"], img["id"]);

    // A second image: name, OS, release and arch from the file name.
    let (_, other, other_sha) = make_disk(dir.path(), "noble-server-cloudimg-amd64", 0x33);
    let o = ok_json(&s, &["image", "import", p(&other), "-o", "json"]);
    assert_eq!(o["name"], "noble-server-cloudimg-amd64");
    assert_eq!(
        (o["os"].as_str(), o["release"].as_str(), o["arch"].as_str()),
        (Some("ubuntu"), Some("24.04"), Some("x86_64"))
    );
    assert_eq!(o["sha256"], other_sha.as_str());

    let list = ok_json(&s, &["image", "list", "-o", "json"]);
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deb12", "noble-server-cloudimg-amd64"]);
    let table = run(&s, &["image", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("deb12") && text.contains(&sha[..12]),
        "{text}"
    );

    let rm = run(&s, &["image", "rm", "deb12"]);
    assert_eq!(code(&rm), 0, "{}", String::from_utf8_lossy(&rm.stderr));
    assert!(
        !stored.exists(),
        "the stored disk is deleted with the image"
    );
    assert_eq!(
        code(&run(&s, &["image", "rm", "deb12"])),
        3,
        "absent image: exit 3"
    );
    assert_eq!(
        ok_json(&s, &["image", "list", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, qcow2, _) = make_disk(dir.path(), "d", 1);

    let missing = run(&s, &["image", "import", "/nonexistent/disk.qcow2"]);
    assert_eq!(code(&missing), 2);

    let bad_name = run(&s, &["image", "import", p(&qcow2), "--name", "bad/name"]);
    assert_eq!(
        code(&bad_name),
        2,
        "{}",
        String::from_utf8_lossy(&bad_name.stderr)
    );
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("name"));
    assert_eq!(
        code(&run(
            &s,
            &["image", "import", p(&qcow2), "--firmware", "coreboot"]
        )),
        2
    );

    // A qcow2 with a backing file is refused, naming the reason.
    let overlay = dir.path().join("overlay.qcow2");
    Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            p(&qcow2),
            p(&overlay),
        ])
        .status()
        .unwrap();
    let out = run(&s, &["image", "import", p(&overlay)]);
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backing file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A truncated qcow2.
    let bytes = std::fs::read(&qcow2).unwrap();
    let cut = dir.path().join("cut.qcow2");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert_eq!(code(&run(&s, &["image", "import", p(&cut)])), 2);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let auth = format!("Bearer {}", s.token);
        let post = |ct: &'static str, body: Vec<u8>| {
            c.post(s.api("/images"))
                .header("authorization", &auth)
                .header("content-type", ct)
                .body(body)
                .send()
        };
        let r = post("text/plain", b"x".to_vec()).await.unwrap();
        assert_eq!(r.status(), 415);
        let r = post("application/octet-stream", vec![]).await.unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let r = post(
            "application/json",
            br#"{"url": "ftp://127.0.0.1/x"}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 422);
        let r = post(
            "application/json",
            br#"{"url": "http://127.0.0.1:1/x", "path": "/x"}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 422);
        let r = post(
            "application/json",
            br#"{"url": "http://127.0.0.1:1/x.img"}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 422, "unreachable URL");
        let r = post("application/json", br#"{"nope": 1}"#.to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let r = post(
            "application/json",
            br#"{"path": "relative/disk.raw"}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 422);
        let r = c
            .get(s.api("/images/nope"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = c.get(s.api("/images")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    });
    // Nothing was left behind by the failed imports.
    let leftovers: Vec<_> = std::fs::read_dir(s.data_path().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Serves `body` once over HTTP on loopback; returns the URL.
fn serve_once(body: Vec<u8>, path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{path}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut req = [0u8; 4096];
            let _ = conn.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    url
}

#[test]
fn url_and_server_path_imports() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (raw, qcow2, sha) = make_disk(
        dir.path(),
        "Rocky-9-GenericCloud-Base-9.5-20241118.0.x86_64",
        7,
    );
    let url = serve_once(
        std::fs::read(&qcow2).unwrap(),
        "Rocky-9-GenericCloud-Base-9.5-20241118.0.x86_64.qcow2",
    );
    let img = ok_json(&s, &["image", "import", &url, "-o", "json"]);
    assert_eq!(img["sha256"], sha.as_str());
    assert_eq!(
        (
            img["os"].as_str(),
            img["release"].as_str(),
            img["login_user"].as_str()
        ),
        (Some("rocky"), Some("9"), Some("rocky"))
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let auth = format!("Bearer {}", s.token);
        // The same disk from a file on the server: the existing image, 200.
        let r = c
            .post(s.api("/images"))
            .header("authorization", &auth)
            .json(&json!({ "path": p(&raw) }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["id"], img["id"]);
        let r = c
            .get(s.api(&format!("/images/{}", img["name"].as_str().unwrap())))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn an_image_in_use_cannot_be_removed() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, qcow2, _) = make_disk(dir.path(), "inuse", 9);
    let img = ok_json(&s, &["image", "import", p(&qcow2), "-o", "json"]);
    ok_json(
        &s,
        &[
            "machine",
            "add",
            "--hostname",
            "web-01",
            "--mac",
            "52:54:00:aa:10:01",
            "-o",
            "json",
        ],
    );
    let m = ok_json(&s, &["machine", "show", "web-01", "-o", "json"]);

    // Deployment sets the machine's image; until it exists, set it in the store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", s.data_path().join("anvil.db").display());
        let store = anvil_store::Store::open_with(&url, anvil_store::Access::Shared)
            .await
            .unwrap();
        let image_id: uuid::Uuid = img["id"].as_str().unwrap().parse().unwrap();
        let machine_id: uuid::Uuid = m["id"].as_str().unwrap().parse().unwrap();
        assert!(
            store
                .set_machine_image(machine_id, Some(image_id))
                .await
                .unwrap()
        );
        store.close().await;
    });
    let list = ok_json(&s, &["image", "list", "-o", "json"]);
    assert_eq!(list["items"][0]["used_by"], json!(["web-01"]));
    let out = run(&s, &["image", "rm", "inuse"]);
    assert_eq!(code(&out), 4, "in use: exit 4 (409)");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web-01"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    rt.block_on(async {
        let c = client();
        let r = c
            .delete(s.api("/images/inuse"))
            .header("authorization", format!("Bearer {}", s.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["type"], "https://anvil.dev/problems/in-use");
        assert!(problem["detail"].as_str().unwrap().contains("web-01"));
    });
}
