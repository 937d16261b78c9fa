//! `anvil enroll`, `anvil power …`, `anvil pxe-boot …` and `anvil rack up`.

use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, OutputFormat, render};
use crate::secret::from_file_or_env;
use crate::{GlobalOpts, output::machine_table};
use anvil_api_types::{BulkSelector, EnrollRequest, Job, JobStatus};
use anvil_types::BmcDriver;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `anvil enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct EnrollArgs {
    /// BMC protocol.
    #[arg(long, value_parser = parse_driver)]
    pub driver: BmcDriver,
    /// BMC address, HOST or HOST:PORT.
    #[arg(long)]
    pub address: String,
    #[arg(long)]
    pub username: Option<String>,
    /// Read the BMC password from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the BMC password from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Hostname for the machine (default: from the BMC's serial number).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Do not verify the BMC's TLS certificate.
    #[arg(long)]
    pub insecure: bool,
    /// A tag; repeat for several.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

fn parse_driver(s: &str) -> Result<BmcDriver, String> {
    s.parse::<BmcDriver>().map_err(|e| e.to_string())
}

/// Machines to act on: names/ids, or every machine with a tag.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Targets {
    /// Machine hostnames or ids.
    #[arg(value_parser = crate::client::parse_segment)]
    pub targets: Vec<String>,
    /// Every machine with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Wait for the jobs to finish; exit non-zero if any failed.
    #[arg(long)]
    pub wait: bool,
}

/// `anvil power on`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct PowerOnArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Also set the next boot (once) to the network. A machine that is
    /// already on keeps running and boots from the network next time; to
    /// reset a running machine into PXE, use `anvil pxe-boot`.
    #[arg(long)]
    pub pxe_once: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PowerCmd {
    /// Power on.
    On(PowerOnArgs),
    /// Power off (hard).
    Off(Targets),
    /// Power cycle (on if off).
    Cycle(Targets),
    /// Read the power state from the BMC now.
    Status(Targets),
}

/// `anvil enroll`.
pub async fn run_enroll(g: &GlobalOpts, a: EnrollArgs) -> Result<(), CliError> {
    let password = from_file_or_env(a.password_file.as_deref(), a.password_env.as_deref())?;
    let client = Client::from_opts(g)?;
    let r = client
        .enroll(&EnrollRequest {
            driver: a.driver,
            address: a.address,
            port: None,
            username: a.username,
            password,
            hostname: a.hostname,
            verify_tls: Some(!a.insecure),
            tags: a.tags,
            macs: Vec::new(),
        })
        .await?;
    if g.output == OutputFormat::Table {
        eprintln!(
            "{}",
            if r.created {
                "Enrolled a new machine."
            } else {
                "Already enrolled: nothing changed."
            }
        );
    }
    output::print(&render(g.output, &r.machine, machine_table)?)
}

fn selector(t: &Targets) -> Result<BulkSelector, CliError> {
    if t.targets.is_empty() && t.tag.is_none() {
        return Err(CliError::Usage(
            "name machines, or select them with --tag".into(),
        ));
    }
    Ok(BulkSelector {
        tag: t.tag.clone(),
        state: None,
        machines: (!t.targets.is_empty()).then(|| t.targets.clone()),
    })
}

/// `anvil power …`.
pub async fn run_power(g: &GlobalOpts, cmd: PowerCmd) -> Result<(), CliError> {
    let (action, t) = match cmd {
        PowerCmd::On(a) if a.pxe_once => ("pxe-power-on", a.targets),
        PowerCmd::On(a) => ("power-on", a.targets),
        PowerCmd::Off(t) => ("power-off", t),
        PowerCmd::Cycle(t) => ("power-cycle", t),
        PowerCmd::Status(t) => return power_status(g, t).await,
    };
    run_action(g, action, t).await
}

/// `anvil pxe-boot …`.
pub async fn run_pxe_boot(g: &GlobalOpts, t: Targets) -> Result<(), CliError> {
    run_action(g, "pxe-boot", t).await
}

async fn run_action(g: &GlobalOpts, action: &str, t: Targets) -> Result<(), CliError> {
    let sel = selector(&t)?;
    let client = Client::from_opts(g)?;
    let jobs = client.bulk_action(action, &sel).await?.items;
    let jobs = if t.wait {
        wait_jobs(&client, jobs, g.output == OutputFormat::Table).await?
    } else {
        jobs
    };
    output::print(&render(g.output, jobs.as_slice(), job_table)?)?;
    let failed = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed)
        .count();
    if t.wait && failed > 0 {
        return Err(CliError::JobsFailed(failed, jobs.len()));
    }
    Ok(())
}

async fn power_status(g: &GlobalOpts, t: Targets) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    let mut names = t.targets.clone();
    if let Some(tag) = &t.tag {
        let list = client
            .list_machines(&anvil_api_types::MachineQuery {
                tag: Some(tag.clone()),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        names.extend(list.items.into_iter().map(|m| m.hostname));
    }
    if names.is_empty() {
        return Err(CliError::Usage(
            "name machines, or select them with --tag".into(),
        ));
    }
    let mut rows = Vec::new();
    let mut errors = 0;
    for n in names {
        match client.refresh_power(&n).await {
            Ok(m) => rows
                .push(serde_json::json!({ "hostname": m.hostname, "power_state": m.power_state })),
            Err(e) => {
                errors += 1;
                rows.push(serde_json::json!({ "hostname": n, "error": e.to_string() }));
            }
        }
    }
    output::print(&render(g.output, rows.as_slice(), |rows| {
        let mut out = String::from("HOSTNAME\tPOWER\n");
        for r in rows {
            out.push_str(&format!(
                "{}\t{}\n",
                r["hostname"].as_str().unwrap_or(""),
                r["power_state"]
                    .as_str()
                    .or(r["error"].as_str())
                    .unwrap_or("unknown")
            ));
        }
        out
    })?)?;
    if errors > 0 {
        return Err(CliError::JobsFailed(errors, rows.len()));
    }
    Ok(())
}

/// Polls jobs until all are done, with a progress bar in table mode.
pub(crate) async fn wait_jobs(
    client: &Client,
    jobs: Vec<Job>,
    bar: bool,
) -> Result<Vec<Job>, CliError> {
    let pb = if bar {
        let pb = indicatif::ProgressBar::new(jobs.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} jobs done {msg}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut done: Vec<Option<Job>> = vec![None; jobs.len()];
    loop {
        for (i, j) in jobs.iter().enumerate() {
            if done[i].is_none() {
                let cur = client.get_job(j.id).await?;
                if matches!(cur.status, JobStatus::Succeeded | JobStatus::Failed) {
                    pb.inc(1);
                    done[i] = Some(cur);
                }
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pb.finish_and_clear();
    Ok(done.into_iter().flatten().collect())
}

pub(crate) fn job_table(jobs: &[Job]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["JOB", "KIND", "MACHINE", "STATUS", "RESULT"]);
    for j in jobs {
        t.add_row([
            j.id.to_string(),
            j.kind.clone(),
            j.machine_id.map(|m| m.to_string()).unwrap_or_default(),
            j.status.to_string(),
            j.error
                .clone()
                .or_else(|| j.result.as_ref().map(|r| r.to_string()))
                .unwrap_or_default(),
        ]);
    }
    t.to_string()
}
