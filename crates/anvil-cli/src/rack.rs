//! `anvil rack up MANIFEST`: enrol every BMC of a manifest, PXE-boot every
//! machine, and wait until each has been discovered (its discovery
//! environment called home), with a progress bar per phase and a summary.
//!
//! Resumable and idempotent: enrolment of a known BMC changes nothing, and a
//! machine whose boot timeline already ends in a call-home is not booted
//! again. `--dry-run` prints the plan and touches nothing.
//!
//! The manifest is CSV (with a header) or YAML (a list, or `machines:` list),
//! with the columns/keys: `driver`, `bmc_address`, `bmc_port`, `username`,
//! `password_file`, `password_env`, `hostname`, `rack`, `position`, `mac`
//! (`docs/examples/rack.csv`, `rack.yaml`).
//!
//! `mac` (optional) is the MAC of the machine's PXE NIC, as the vendor's
//! packing list gives it. IPMI BMCs report no NICs: without it, Anvil cannot
//! tell that the machine PXE-booting is the one just enrolled, discovers it
//! as a second machine, and the enrolled one never calls home. Redfish BMCs
//! report their NICs, which win over the column.

use crate::GlobalOpts;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, OutputFormat, render};
use crate::secret::from_file_or_env;
use anvil_api_types::{EnrollRequest, JobStatus};
use anvil_types::{BmcDriver, MacAddr};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum RackCmd {
    /// Enrol, PXE-boot and wait for every machine of a manifest.
    Up(RackUpArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RackUpArgs {
    /// CSV or YAML manifest of BMCs.
    pub manifest: PathBuf,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machines handled at once.
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// How long to wait for each machine to be discovered, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackEntry {
    pub driver: String,
    pub bmc_address: String,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub bmc_port: Option<u16>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub password_env: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub rack: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub position: Option<String>,
    /// MAC of the PXE NIC (for BMCs that report no NICs, such as IPMI).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub mac: Option<MacAddr>,
}

/// CSV cells are strings; an empty cell means "not given".
fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(u64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::S(s)) if s.trim().is_empty() => Ok(None),
        Some(Raw::S(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
        Some(Raw::N(n)) => n
            .to_string()
            .parse()
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum YamlManifest {
    List(Vec<RackEntry>),
    Doc { machines: Vec<RackEntry> },
}

/// Reads a manifest; errors name the line (CSV) or entry.
pub fn read_manifest(path: &Path) -> Result<Vec<RackEntry>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read manifest {}: {e}", path.display())))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let entries = if yaml {
        match serde_saphyr::from_str::<YamlManifest>(&text)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        {
            YamlManifest::List(l) => l,
            YamlManifest::Doc { machines } => machines,
        }
    } else {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let mut out = Vec::new();
        for (i, rec) in rdr.deserialize::<RackEntry>().enumerate() {
            out.push(rec.map_err(|e| {
                CliError::Usage(format!("{} entry {}: {e}", path.display(), i + 1))
            })?);
        }
        out
    };
    if entries.is_empty() {
        return Err(CliError::Usage(format!("{}: no machines", path.display())));
    }
    for (i, e) in entries.iter().enumerate() {
        e.driver
            .parse::<BmcDriver>()
            .map_err(|err| CliError::Usage(format!("{} entry {}: {err}", path.display(), i + 1)))?;
        if e.bmc_address.trim().is_empty() {
            return Err(CliError::Usage(format!(
                "{} entry {}: bmc_address is empty",
                path.display(),
                i + 1
            )));
        }
    }
    Ok(entries)
}

/// What happened to one machine.
#[derive(Debug, Clone, Serialize)]
pub struct RackOutcome {
    pub bmc: String,
    pub hostname: Option<String>,
    pub enrolled: Option<&'static str>,
    pub pxe_boot: Option<String>,
    pub discovered: bool,
    pub seconds: f64,
    pub error: Option<String>,
}

pub async fn run_rack(g: &GlobalOpts, cmd: RackCmd) -> Result<(), CliError> {
    let RackCmd::Up(args) = cmd;
    let entries = read_manifest(&args.manifest)?;
    if args.dry_run {
        let plan: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "bmc": format!("{}{}", e.bmc_address, e.bmc_port.map(|p| format!(":{p}")).unwrap_or_default()),
                    "driver": e.driver,
                    "hostname": e.hostname,
                    "rack": e.rack,
                    "position": e.position,
                    "mac": e.mac.map(|m| m.to_string()),
                    "steps": ["enroll", "pxe-boot", "wait for discovery"],
                })
            })
            .collect();
        return output::print(&render(g.output, plan.as_slice(), |plan| {
            let mut out = format!("Plan for {} machines (nothing is changed):\n", plan.len());
            for p in plan {
                out.push_str(&format!(
                    "  {:<24} {:<8} {:<20} rack {} pos {}: enroll, pxe-boot, wait for discovery\n",
                    p["bmc"].as_str().unwrap_or(""),
                    p["driver"].as_str().unwrap_or(""),
                    p["hostname"].as_str().unwrap_or("(from BMC)"),
                    p["rack"].as_str().unwrap_or("-"),
                    p["position"].as_str().unwrap_or("-"),
                ));
            }
            out
        })?);
    }
    // Read every password before touching anything: a missing file fails
    // the whole run up front, not half-way.
    let mut passwords = Vec::with_capacity(entries.len());
    for e in &entries {
        passwords.push(from_file_or_env(
            e.password_file.as_deref(),
            e.password_env.as_deref(),
        )?);
    }
    let client = Arc::new(Client::from_opts(g)?);
    let bars = indicatif::MultiProgress::new();
    if g.output != OutputFormat::Table {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let n = entries.len() as u64;
    let enrolled_bar = bars.add(
        indicatif::ProgressBar::new(n)
            .with_style(style.clone())
            .with_prefix("enrolled"),
    );
    let booted_bar = bars.add(
        indicatif::ProgressBar::new(n)
            .with_style(style.clone())
            .with_prefix("booting"),
    );
    let found_bar = bars.add(
        indicatif::ProgressBar::new(n)
            .with_style(style)
            .with_prefix("discovered"),
    );
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, (e, password)) in entries.into_iter().zip(passwords).enumerate() {
        let client = client.clone();
        let slots = slots.clone();
        let (eb, bb, fb) = (enrolled_bar.clone(), booted_bar.clone(), found_bar.clone());
        let timeout = Duration::from_secs(args.timeout);
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let out = bring_up(&client, e, password, timeout, (&eb, &bb, &fb)).await;
            (i, out)
        });
    }
    let mut outcomes: Vec<Option<RackOutcome>> = vec![None; n as usize];
    while let Some(r) = set.join_next().await {
        if let Ok((i, o)) = r {
            outcomes[i] = Some(o);
        }
    }
    for b in [&enrolled_bar, &booted_bar, &found_bar] {
        b.finish();
    }
    let outcomes: Vec<RackOutcome> = outcomes.into_iter().flatten().collect();
    let failed = outcomes.iter().filter(|o| !o.discovered).count();
    output::print(&render(g.output, outcomes.as_slice(), summary_table)?)?;
    if failed > 0 {
        return Err(CliError::JobsFailed(failed, outcomes.len()));
    }
    Ok(())
}

async fn bring_up(
    client: &Client,
    e: RackEntry,
    password: Option<String>,
    timeout: Duration,
    bars: (
        &indicatif::ProgressBar,
        &indicatif::ProgressBar,
        &indicatif::ProgressBar,
    ),
) -> RackOutcome {
    let start = Instant::now();
    let bmc = format!(
        "{}{}",
        e.bmc_address,
        e.bmc_port.map(|p| format!(":{p}")).unwrap_or_default()
    );
    let mut out = RackOutcome {
        bmc: bmc.clone(),
        hostname: e.hostname.clone(),
        enrolled: None,
        pxe_boot: None,
        discovered: false,
        seconds: 0.0,
        error: None,
    };
    let mut tags = Vec::new();
    if let Some(r) = &e.rack {
        tags.push(format!("rack:{r}"));
    }
    if let Some(p) = &e.position {
        tags.push(format!("position:{p}"));
    }
    let driver = match e.driver.parse::<BmcDriver>() {
        Ok(d) => d,
        Err(err) => {
            out.error = Some(err.to_string());
            return out;
        }
    };
    let enrolled = client
        .enroll(&EnrollRequest {
            driver,
            address: e.bmc_address.clone(),
            port: e.bmc_port,
            username: e.username.clone(),
            password,
            hostname: e.hostname.clone(),
            verify_tls: None,
            tags,
            macs: e.mac.iter().map(|m| m.to_string()).collect(),
        })
        .await;
    let machine = match enrolled {
        Ok(r) => {
            out.enrolled = Some(if r.created { "created" } else { "existing" });
            out.hostname = Some(r.machine.hostname.clone());
            bars.0.inc(1);
            r.machine
        }
        Err(err) => {
            out.error = Some(format!("enroll: {err}"));
            out.seconds = start.elapsed().as_secs_f64();
            return out;
        }
    };
    let id = machine.id.to_string();
    // Resume: a machine that already called home is not booted again.
    if let Ok(t) = client.boot_timeline(&id).await
        && t.events.iter().any(|ev| ev.kind == "callhome")
    {
        out.pxe_boot = Some("skipped (already discovered)".into());
        out.discovered = true;
        bars.1.inc(1);
        bars.2.inc(1);
        out.seconds = start.elapsed().as_secs_f64();
        return out;
    }
    let job = match client.machine_action(&id, "pxe-boot").await {
        Ok(j) => j,
        Err(err) => {
            out.error = Some(format!("pxe-boot: {err}"));
            out.seconds = start.elapsed().as_secs_f64();
            return out;
        }
    };
    let booted_at = job.created_at;
    loop {
        match client.get_job(job.id).await {
            Ok(j) if j.status == JobStatus::Succeeded => {
                out.pxe_boot = Some("ok".into());
                bars.1.inc(1);
                break;
            }
            Ok(j) if j.status == JobStatus::Failed => {
                out.pxe_boot = Some("failed".into());
                out.error = Some(format!("pxe-boot: {}", j.error.unwrap_or_default()));
                out.seconds = start.elapsed().as_secs_f64();
                return out;
            }
            Ok(_) => {}
            Err(err) => {
                out.error = Some(format!("pxe-boot: {err}"));
                out.seconds = start.elapsed().as_secs_f64();
                return out;
            }
        }
        if start.elapsed() > timeout {
            out.error = Some("pxe-boot: the job did not finish in time".into());
            out.seconds = start.elapsed().as_secs_f64();
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        if let Ok(t) = client.boot_timeline(&id).await
            && t.events
                .iter()
                .any(|ev| ev.kind == "callhome" && ev.time >= booted_at)
        {
            out.discovered = true;
            bars.2.inc(1);
            break;
        }
        if start.elapsed() > timeout {
            let last = client
                .boot_timeline(&id)
                .await
                .ok()
                .and_then(|t| t.stopped_after)
                .unwrap_or_else(|| "nothing (no DHCP request seen)".into());
            out.error = Some(format!(
                "not discovered within {}s; the boot stopped after {last}",
                timeout.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}

fn summary_table(rows: &[RackOutcome]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "BMC",
        "HOSTNAME",
        "ENROLLED",
        "PXE-BOOT",
        "DISCOVERED",
        "SECONDS",
        "ERROR",
    ]);
    for r in rows {
        t.add_row([
            r.bmc.clone(),
            r.hostname.clone().unwrap_or_default(),
            r.enrolled.unwrap_or("no").to_string(),
            r.pxe_boot.clone().unwrap_or_else(|| "-".into()),
            if r.discovered {
                "yes".into()
            } else {
                "no".into()
            },
            format!("{:.0}", r.seconds),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    let ok = rows.iter().filter(|r| r.discovered).count();
    format!("{t}\n{ok} of {} machines up.\n", rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_yaml_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("rack.csv");
        std::fs::write(
            &csv,
            "driver,bmc_address,bmc_port,username,password_file,password_env,hostname,rack,position\n\
             # a comment\n\
             redfish,10.0.0.1,,root,/etc/pw,,node-1,R1,U01\n\
             ipmi,10.0.0.2,623,admin,,BMC_PW,,R1,U02\n",
        )
        .unwrap();
        let e = read_manifest(&csv).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].bmc_port, None);
        assert_eq!(e[1].bmc_port, Some(623));
        assert_eq!(e[1].password_env.as_deref(), Some("BMC_PW"));
        assert_eq!(e[0].hostname.as_deref(), Some("node-1"));
        let yaml = dir.path().join("rack.yaml");
        std::fs::write(&yaml, "machines:\n  - driver: redfish\n    bmc_address: 10.0.0.1\n    bmc_port: 8443\n    password_env: PW\n").unwrap();
        let e = read_manifest(&yaml).unwrap();
        assert_eq!(e[0].bmc_port, Some(8443));
        std::fs::write(&yaml, "- driver: snmp\n  bmc_address: x\n").unwrap();
        assert!(read_manifest(&yaml).is_err());
        std::fs::write(&csv, "driver,bmc_address,colour\nredfish,1,red\n").unwrap();
        let err = read_manifest(&csv).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
        assert!(read_manifest(Path::new("/nonexistent.csv")).is_err());
    }

    #[test]
    fn shipped_examples_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
        let csv = read_manifest(&root.join("rack.csv")).unwrap();
        assert_eq!(csv.len(), 3);
        assert_eq!(csv[2].password_env.as_deref(), Some("BMC_PASSWORD"));
        assert_eq!(csv[0].mac, None);
        assert_eq!(
            csv[2].mac.map(|m| m.to_string()).as_deref(),
            Some("3c:ec:ef:10:07:05")
        );
        let yaml = read_manifest(&root.join("rack.yaml")).unwrap();
        assert_eq!(yaml.len(), 2);
        assert_eq!(yaml[1].bmc_port, Some(623));
        assert_eq!(yaml[1].mac, csv[2].mac);
    }

    #[test]
    fn the_mac_column_is_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("rack.csv");
        std::fs::write(
            &csv,
            "driver,bmc_address,bmc_port,username,password_env,hostname,mac\n\
             ipmi,10.0.0.2,623,admin,BMC_PW,node-2,52-54-00-AA-BB-01\n\
             redfish,10.0.0.3,,root,BMC_PW,node-3,\n",
        )
        .unwrap();
        let e = read_manifest(&csv).unwrap();
        assert_eq!(
            e[0].mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:aa:bb:01"),
            "normalised"
        );
        assert_eq!(e[1].mac, None, "an empty cell is no MAC");
        std::fs::write(
            &csv,
            "driver,bmc_address,mac\nipmi,10.0.0.2,52:54:00:aa:bb\n",
        )
        .unwrap();
        let err = read_manifest(&csv).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
        let yaml = dir.path().join("rack.yaml");
        std::fs::write(
            &yaml,
            "- driver: ipmi\n  bmc_address: 10.0.0.2\n  mac: \"52:54:00:aa:bb:02\"\n",
        )
        .unwrap();
        assert_eq!(
            read_manifest(&yaml).unwrap()[0]
                .mac
                .map(|m| m.to_string())
                .as_deref(),
            Some("52:54:00:aa:bb:02")
        );
    }
}
