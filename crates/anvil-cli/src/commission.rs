//! `anvil machine commission TARGET… [--tag T] [--tests cpu,memory,disk] [--wait]`.
//!
//! Starts one commissioning job per machine (`POST /api/v1/actions/commission`).
//! With `--wait` it follows each machine's run with a progress bar (steps
//! done, the current step and its progress) and exits 8 if any machine
//! ended `failed`, after printing why.

use crate::GlobalOpts;
use crate::client::{Client, parse_segment};
use crate::error::CliError;
use crate::output::{self, OutputFormat, render};
use crate::power::job_table;
use anvil_api_types::agent::{
    BulkCommission, CommissioningRun, CommissioningRunList, HardwareTest, RunState, StepStatus,
};
use anvil_api_types::{Job, JobList, JobStatus, Machine};
use clap::Args;
use reqwest::Method;
use std::time::Duration;

/// Options of `anvil machine commission`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CommissionArgs {
    /// Machine hostnames or ids.
    #[arg(value_parser = parse_segment, required_unless_present = "tag")]
    pub targets: Vec<String>,
    /// Every machine with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Hardware tests to run after the inventory, comma-separated: cpu,
    /// memory, disk.
    #[arg(long, value_delimiter = ',', value_parser = parse_test)]
    pub tests: Vec<HardwareTest>,
    /// Wait until every machine is ready or failed, with progress bars;
    /// exit 8 if any failed.
    #[arg(long)]
    pub wait: bool,
}

fn parse_test(s: &str) -> Result<HardwareTest, String> {
    HardwareTest::parse(s)
        .ok_or_else(|| format!("unknown test {s:?}: expected cpu, memory or disk"))
}

impl CommissionArgs {
    pub fn body(&self) -> BulkCommission {
        BulkCommission {
            tag: self.tag.clone(),
            state: None,
            machines: (!self.targets.is_empty()).then(|| self.targets.clone()),
            tests: self.tests.clone(),
        }
    }
}

/// Runs `anvil machine commission`.
pub async fn run_commission(g: &GlobalOpts, a: CommissionArgs) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    let jobs: JobList = client
        .json(
            client
                .request(Method::POST, &["actions", "commission"])
                .json(&a.body()),
        )
        .await?;
    let jobs = jobs.items;
    if !a.wait {
        return output::print(&render(g.output, jobs.as_slice(), job_table)?);
    }
    let outcomes = follow(&client, &jobs, g.output == OutputFormat::Table).await?;
    let done: Vec<Job> = outcomes.iter().map(|o| o.job.clone()).collect();
    output::print(&render(g.output, done.as_slice(), job_table)?)?;
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.job.status == JobStatus::Failed)
        .collect();
    for f in &failed {
        eprintln!(
            "{}: {}",
            f.hostname,
            f.job.error.as_deref().unwrap_or("commissioning failed")
        );
    }
    if !failed.is_empty() {
        return Err(CliError::JobsFailed(failed.len(), outcomes.len()));
    }
    Ok(())
}

struct Outcome {
    hostname: String,
    job: Job,
}

/// One line of progress: what the run is doing now.
pub fn describe(run: Option<&CommissioningRun>) -> (u64, u64, String) {
    let Some(run) = run else {
        return (0, 1, "starting".into());
    };
    let total = run.steps.len().max(1) as u64;
    let done = run
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .count() as u64;
    if run.state != RunState::Running {
        let msg = match &run.failure_reason {
            Some(r) => format!("{}: {r}", run.state.as_str()),
            None => run.state.as_str().to_string(),
        };
        return (done, total, msg);
    }
    if run.registered_at.is_none() {
        return (done, total, "booting; waiting for the agent".into());
    }
    match run.steps.iter().find(|s| !s.status.is_finished()) {
        Some(s) if s.status == StepStatus::Pending => {
            (done, total, format!("{}: next", s.kind.as_str()))
        }
        Some(s) => {
            let mut msg = format!("{}: {}", s.kind.as_str(), s.status.as_str());
            if let Some(p) = s.progress {
                msg.push_str(&format!(" {}/{}", p.done, p.total));
            }
            if let Some(m) = &s.message {
                msg.push_str(" — ");
                msg.extend(m.chars().take(60));
            }
            (done, total, msg)
        }
        None => (done, total, "finishing".into()),
    }
}

async fn follow(client: &Client, jobs: &[Job], bars: bool) -> Result<Vec<Outcome>, CliError> {
    let multi = if bars {
        indicatif::MultiProgress::new()
    } else {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let style =
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:20}] {pos}/{len} steps {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut tracked = Vec::with_capacity(jobs.len());
    for j in jobs {
        let hostname = match j.machine_id {
            Some(id) => {
                let m: Machine = client
                    .json(client.request(Method::GET, &["machines", &id.to_string()]))
                    .await?;
                m.hostname
            }
            None => j.id.to_string(),
        };
        let pb = multi.add(indicatif::ProgressBar::new(1));
        pb.set_style(style.clone());
        pb.set_prefix(hostname.clone());
        tracked.push((hostname, j.clone(), pb, None::<Job>));
    }
    loop {
        let mut all_done = true;
        for (hostname, job, pb, done) in tracked.iter_mut() {
            if done.is_some() {
                continue;
            }
            let cur = client.get_job(job.id).await?;
            let runs: CommissioningRunList = client
                .json(client.request(
                    Method::GET,
                    &["machines", hostname.as_str(), "commissioning-runs"],
                ))
                .await?;
            let run = runs.items.iter().find(|r| r.job_id == Some(job.id));
            let (pos, len, msg) = describe(run);
            pb.set_length(len);
            pb.set_position(pos);
            pb.set_message(msg);
            if matches!(cur.status, JobStatus::Succeeded | JobStatus::Failed) {
                pb.finish();
                *done = Some(cur);
            } else {
                all_done = false;
            }
        }
        if all_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !bars {
        multi.clear().ok();
    }
    Ok(tracked
        .into_iter()
        .filter_map(|(hostname, _, _, done)| done.map(|job| Outcome { hostname, job }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::agent::{RunStep, StepKind, StepProgress};
    use clap::Parser;
    use uuid::Uuid;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: CommissionArgs,
    }

    #[test]
    fn parses_targets_tests_and_wait() {
        let c = Cli::try_parse_from(["x", "a", "b", "--tests", "cpu,DISK", "--wait"]).unwrap();
        assert_eq!(c.a.targets, ["a", "b"]);
        assert_eq!(c.a.tests, [HardwareTest::Cpu, HardwareTest::Disk]);
        assert!(c.a.wait);
        let body = c.a.body();
        assert_eq!(
            body.machines.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        let e = Cli::try_parse_from(["x", "a", "--tests", "gpu"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown test"), "{e}");
        assert!(
            Cli::try_parse_from(["x"]).is_err(),
            "a target or --tag is needed"
        );
        let c = Cli::try_parse_from(["x", "--tag", "rack1"]).unwrap();
        assert_eq!(c.a.body().machines, None);
    }

    fn run(state: RunState, registered: bool, steps: Vec<RunStep>) -> CommissioningRun {
        let t = time::OffsetDateTime::UNIX_EPOCH;
        CommissioningRun {
            id: Uuid::nil(),
            machine_id: Uuid::nil(),
            number: 1,
            purpose: Default::default(),
            state,
            tests: vec![],
            job_id: None,
            failure_reason: (state == RunState::Failed).then(|| "cpu_test failed: hot".into()),
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: t,
            registered_at: registered.then_some(t),
            finished_at: None,
            deadline: t,
            steps,
        }
    }

    fn step(kind: StepKind, status: StepStatus) -> RunStep {
        RunStep {
            id: Uuid::nil(),
            index: 0,
            kind,
            params: serde_json::json!({}),
            status,
            last_seq: 0,
            message: Some("listening for LLDP".into()),
            progress: Some(StepProgress {
                done: 10,
                total: 30,
            }),
            result: None,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn progress_lines_say_where_the_run_is() {
        assert_eq!(describe(None).2, "starting");
        let steps = vec![
            step(StepKind::Inventory, StepStatus::Progress),
            step(StepKind::CpuTest, StepStatus::Pending),
        ];
        assert_eq!(
            describe(Some(&run(RunState::Running, false, steps.clone()))),
            (0, 2, "booting; waiting for the agent".into())
        );
        assert_eq!(
            describe(Some(&run(RunState::Running, true, steps))),
            (
                0,
                2,
                "inventory: progress 10/30 — listening for LLDP".into()
            )
        );
        let steps = vec![
            step(StepKind::Inventory, StepStatus::Succeeded),
            step(StepKind::CpuTest, StepStatus::Failed),
        ];
        assert_eq!(
            describe(Some(&run(RunState::Failed, true, steps))),
            (1, 2, "failed: cpu_test failed: hot".into())
        );
    }
}
