//! `anvil image …`: the OS image library.
//!
//! `anvil image import PATH|URL [--name N] [--os OS --release R]` uploads a
//! local file as the request body (streamed, with a progress bar on stderr
//! when it is a terminal) or asks the server to fetch an `http(s)://` URL.
//! The server converts the image once (raw or qcow2, plain or gz/xz/zst) and
//! answers with the stored image; importing an image the library already
//! holds prints the existing one (same sha256) and creates nothing.
//! `anvil image import --installer OS --name N --kernel K --initrd I
//! [--repo URL]` registers an installer image (kernel and initrd fetched by
//! the server from a URL, or read from a path on the server).
//! `anvil image list` lists them with the machines using each;
//! `anvil image rm NAME` deletes one (exit 4 while machines use it).

use crate::GlobalOpts;
use crate::client::{Client, parse_segment};
use crate::error::CliError;
use crate::output::{self, render};
use anvil_api_types::images::{Image, ImageList, ImageMeta, ImportImage};
use anvil_api_types::installer::InstallerImageImport;
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets};
use reqwest::Method;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Import, list and delete OS images.
// Parsed once per process: the size of the import variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ImageCmd {
    /// Import an image file (uploaded) or an http(s) URL (fetched by the server).
    Import(ImageImportArgs),
    /// List the images and the machines that use them.
    #[command(alias = "ls")]
    List,
    /// Delete an image (refused while machines use it).
    #[command(alias = "delete")]
    Rm {
        #[arg(value_parser = parse_segment)]
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ImageImportArgs {
    /// A local file (raw or qcow2, optionally .gz/.xz/.zst) or an http(s):// URL.
    #[arg(required_unless_present = "installer", conflicts_with = "installer")]
    pub source: Option<String>,
    /// Register an installer image instead of importing a disk: debian,
    /// ubuntu, rocky or alma (with --name, --kernel and --initrd).
    #[arg(long, value_name = "OS", requires_all = ["name", "kernel", "initrd"], conflicts_with = "os")]
    pub installer: Option<String>,
    /// With --installer: the installer's kernel, an http(s):// URL the
    /// server fetches or an absolute path on the server (administrators).
    #[arg(long, value_name = "URL|SERVER_PATH", requires = "installer")]
    pub kernel: Option<String>,
    /// With --installer: its initrd, as for --kernel.
    #[arg(long, value_name = "URL|SERVER_PATH", requires = "installer")]
    pub initrd: Option<String>,
    /// With --installer: the Debian mirror (default deb.debian.org), the
    /// Ubuntu live-server ISO, or the Rocky/Alma BaseOS repository URL.
    #[arg(long, value_name = "URL", requires = "installer")]
    pub repo: Option<String>,
    /// Image name (default: the file name without extensions).
    #[arg(long)]
    pub name: Option<String>,
    /// Operating system, e.g. debian, ubuntu, rocky (default: from the file name).
    #[arg(long)]
    pub os: Option<String>,
    /// OS release, e.g. 12, 24.04, 9 (default: from the file name).
    #[arg(long)]
    pub release: Option<String>,
    /// x86_64 or aarch64 (default: from the file name).
    #[arg(long)]
    pub arch: Option<String>,
    /// bios, uefi or bios+uefi (default: from the partition table).
    #[arg(long)]
    pub firmware: Option<String>,
    /// The image's default user (default: the distribution's).
    #[arg(long)]
    pub login_user: Option<String>,
}

/// An upload may be large and the server converts before answering.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

pub async fn run_image(g: &GlobalOpts, cmd: ImageCmd) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    match cmd {
        ImageCmd::Import(args) => {
            let image = import(&client, args).await?;
            output::print(&render(g.output, &image, image_table)?)
        }
        ImageCmd::List => {
            let list: ImageList = client
                .json(client.request(Method::GET, &["images"]))
                .await?;
            output::print(&render(g.output, &list, |l| image_list_table(&l.items))?)
        }
        ImageCmd::Rm { name } => {
            client
                .empty(client.request(Method::DELETE, &["images", &name]))
                .await?;
            eprintln!("deleted image {name}");
            Ok(())
        }
    }
}

/// `--kernel`/`--initrd`: a URL for the server to fetch, else a path on
/// the server.
fn url_or_server_path(v: &str) -> (Option<String>, Option<String>) {
    if v.starts_with("http://") || v.starts_with("https://") {
        (Some(v.to_string()), None)
    } else {
        (None, Some(v.to_string()))
    }
}

/// `--installer OS`: registers an installer image (`docs/deployment.md`).
async fn register_installer(
    client: &Client,
    os: String,
    args: ImageImportArgs,
) -> Result<Image, CliError> {
    let (kernel_url, kernel_path) = url_or_server_path(args.kernel.as_deref().unwrap_or(""));
    let (initrd_url, initrd_path) = url_or_server_path(args.initrd.as_deref().unwrap_or(""));
    let body = InstallerImageImport {
        kind: "installer".into(),
        name: args.name.unwrap_or_default(),
        os,
        release: args.release,
        arch: args.arch,
        kernel_url,
        kernel_path,
        initrd_url,
        initrd_path,
        repo_url: args.repo,
    };
    eprintln!("the server is fetching the installer's kernel and initrd …");
    let req = client
        .request(Method::POST, &["images"])
        .timeout(IMPORT_TIMEOUT)
        .json(&body);
    client.json(req).await
}

async fn import(client: &Client, mut args: ImageImportArgs) -> Result<Image, CliError> {
    if let Some(os) = args.installer.take() {
        return register_installer(client, os, args).await;
    }
    let source = args.source.clone().unwrap_or_default();
    let is_url = source.starts_with("http://") || source.starts_with("https://");
    if is_url {
        let body = ImportImage {
            url: Some(source.clone()),
            path: None,
            name: args.name,
            os: args.os,
            release: args.release,
            arch: args.arch,
            firmware: args.firmware,
            login_user: args.login_user,
        };
        eprintln!("the server is fetching and converting {source} …");
        let req = client
            .request(Method::POST, &["images"])
            .timeout(IMPORT_TIMEOUT)
            .json(&body);
        return client.json(req).await;
    }
    let path = PathBuf::from(&source);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?
        .len();
    let meta = ImageMeta {
        name: args.name,
        os: args.os,
        release: args.release,
        arch: args.arch,
        firmware: args.firmware,
        login_user: args.login_user,
        filename: path.file_name().map(|f| f.to_string_lossy().into_owned()),
    };
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = bar.clone();
    let chunks = futures_lite_unfold(file, progress);
    let req = client
        .request(Method::POST, &["images"])
        .timeout(IMPORT_TIMEOUT)
        .query(&meta)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(chunks));
    let result = client.json(req).await;
    bar.finish_and_clear();
    if result.is_ok() && std::io::stderr().is_terminal() {
        eprintln!("uploaded {size} bytes");
    }
    result
}

/// The file as a stream of 1 MiB chunks, advancing the progress bar.
fn futures_lite_unfold(
    file: tokio::fs::File,
    bar: indicatif::ProgressBar,
) -> impl futures_core_stream::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_core_stream::unfold((file, bar), |(mut file, bar)| async move {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                bar.inc(n as u64);
                Some((Ok(buf), (file, bar)))
            }
            Err(e) => Some((Err(e), (file, bar))),
        }
    })
}

mod futures_core_stream {
    pub use futures::stream::{Stream, unfold};
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// NAME, OS, RELEASE, ARCH, FIRMWARE, FORMAT, RAW, STORED, SHA256 (short), USED BY.
pub(crate) fn image_list_table(images: &[Image]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t.set_header([
        "NAME", "OS", "RELEASE", "ARCH", "FIRMWARE", "FORMAT", "RAW", "STORED", "SHA256", "USED BY",
    ]);
    for i in images {
        t.add_row([
            i.name.clone(),
            dash(&i.os),
            dash(&i.release),
            dash(&i.arch),
            dash(&i.firmware),
            i.source_format.clone(),
            size(i.raw_size),
            size(i.stored_size),
            i.sha256.chars().take(12).collect(),
            if i.used_by.is_empty() {
                "-".into()
            } else {
                i.used_by.join(",")
            },
        ]);
    }
    let mut s = t
        .to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    s.push('\n');
    s
}

fn image_table(i: &Image) -> String {
    let rows = [
        ("name", i.name.clone()),
        ("os", dash(&i.os)),
        ("release", dash(&i.release)),
        ("arch", dash(&i.arch)),
        ("firmware", dash(&i.firmware)),
        ("login_user", dash(&i.login_user)),
        ("source_format", i.source_format.clone()),
        (
            "source_size",
            format!("{} ({})", i.source_size, size(i.source_size)),
        ),
        ("raw_size", format!("{} ({})", i.raw_size, size(i.raw_size))),
        (
            "stored_size",
            format!("{} ({})", i.stored_size, size(i.stored_size)),
        ),
        ("zero_bytes", i.zero_bytes.to_string()),
        ("sha256", i.sha256.clone()),
        (
            "used_by",
            if i.used_by.is_empty() {
                "-".into()
            } else {
                i.used_by.join(",")
            },
        ),
        ("id", i.id.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<14} {v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2 << 30), "2.0 GiB");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
