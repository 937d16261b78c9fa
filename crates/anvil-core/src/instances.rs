//! This process as one Anvil instance among those sharing the store, and
//! the jobs that instances which stopped left behind.
//!
//! Every `anvil serve` registers itself under a new id, stamps the jobs it
//! creates with that id, and refreshes its `seen_at` every few seconds; a
//! clean stop marks it stopped. A queued or running job whose owner is
//! stopped, silent for [`SILENT_FOR`] or unknown is an orphan. Any live
//! instance takes each orphan over (exactly one: `adopt_job` is a
//! compare-and-set) and then
//! - follows it on when it is the job of an agent or installer run: the run
//!   lives in the store, the agent or installer goes on talking to whichever
//!   instance answers, and the job ends with the run, as if nothing had
//!   happened (a job still `queued` is started from the beginning: its
//!   network boot may never have been asked for);
//! - fails it as interrupted otherwise (a power action whose BMC call may or
//!   may not have happened; the poller reads the power state again).
//!
//! So restarting Anvil in the middle of a deployment no longer fails the
//! deployment's job, and restarting one instance of several no longer fails
//! the jobs the others are running. On SQLite the file lock proves that no
//! other process uses the database, so at start every other instance is
//! marked stopped and its jobs are taken over at once.

use std::time::Duration;

use crate::commission::run_purpose;
use crate::error::Result;
use crate::{App, now};
use anvil_store::{Backend, OrphanJob};
use anvil_types::{Job, JobStatus};
use uuid::Uuid;

/// How often an instance says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// An instance not heard from for this long is taken for dead.
pub const SILENT_FOR: Duration = Duration::from_secs(60);
/// How often a live instance looks for orphans.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Stopped instances owning no job are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// What one look for orphaned jobs did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Jobs of agent or installer runs, now followed by this instance.
    pub resumed: u64,
    /// Jobs failed as interrupted.
    pub failed: u64,
}

impl App {
    /// This process's instance id (the owner of the jobs it creates).
    pub fn instance_id(&self) -> Uuid {
        self.instance
    }

    /// Registers this instance, takes over or fails what stopped instances
    /// left, and from then on keeps both up in the background.
    pub async fn start_instance(&self) -> Result<Sweep> {
        let at = now();
        self.store
            .register_instance(self.instance, &hostname(), at)
            .await?;
        if self.store.backend() == Backend::Sqlite {
            self.store.stop_instances(self.instance, true, at).await?;
        }
        let first = self.sweep_orphans().await?;
        let app = self.clone();
        tokio::spawn(async move {
            let mut last_sweep = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let stopped = app.stopped.lock().await;
                if *stopped {
                    return;
                }
                let seen = app.store.instance_seen(app.instance, now()).await;
                drop(stopped);
                match seen {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        instance = %app.instance,
                        "this instance was taken for stopped (silent for over {} s?) and is recorded as \
                         running again; other instances may have taken its jobs over",
                        SILENT_FOR.as_secs()
                    ),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "instance heartbeat not recorded")
                    }
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = tokio::time::Instant::now();
                    if let Err(e) = app.sweep_orphans().await {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot look for orphaned jobs");
                    }
                    let before = now() - FORGET_AFTER;
                    if let Err(e) = app.store.prune_instances(before).await {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot prune old instances");
                    }
                }
            }
        });
        Ok(first)
    }

    /// Marks this instance stopped (a clean shutdown): its unfinished jobs
    /// become orphans for the other instances, or for the next start, at once.
    pub async fn stop_instance(&self) -> Result<()> {
        let mut stopped = self.stopped.lock().await;
        *stopped = true;
        self.store
            .stop_instances(self.instance, false, now())
            .await?;
        Ok(())
    }

    /// Whether this instance does the work only one instance should do (the
    /// NetBox sync and write-back, the power poller): the longest-running
    /// live instance does. An instance that is not registered (a test, a
    /// tool) counts as alone. When the leader stops, the next one takes
    /// over within [`SILENT_FOR`] (at once after a clean stop).
    pub(crate) async fn is_leader(&self) -> bool {
        match self.store.instance_leader(now() - SILENT_FOR).await {
            Ok(Some(leader)) => leader == self.instance,
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot tell which instance leads");
                false
            }
        }
    }

    /// The instances on record, which of them are live and which leads.
    pub async fn list_instances(&self) -> Result<Vec<anvil_api_types::Instance>> {
        let live_since = now() - SILENT_FOR;
        let leader = self.store.instance_leader(live_since).await?;
        Ok(self
            .store
            .list_instances()
            .await?
            .into_iter()
            .map(|i| anvil_api_types::Instance {
                live: i.stopped_at.is_none() && i.seen_at >= live_since,
                leader: leader == Some(i.id),
                this: i.id == self.instance,
                id: i.id,
                hostname: i.hostname,
                started_at: i.started_at,
                seen_at: i.seen_at,
                stopped_at: i.stopped_at,
            })
            .collect())
    }

    /// Takes over the orphaned jobs: follows those of runs, fails the rest.
    pub async fn sweep_orphans(&self) -> Result<Sweep> {
        let live_since = now() - SILENT_FOR;
        let mut sweep = Sweep::default();
        for OrphanJob { job, owner } in self.store.orphaned_jobs(live_since).await? {
            if owner == Some(self.instance)
                || !self.store.adopt_job(job.id, owner, self.instance).await?
            {
                continue;
            }
            match self.take_over(&job, owner).await {
                Ok(true) => sweep.resumed += 1,
                Ok(false) => sweep.failed += 1,
                Err(e) => {
                    // Neither followed nor failed: give it back, so that the
                    // next look (by any instance) tries again.
                    tracing::warn!(job = %job.id, error = %crate::error_chain(&e), "cannot take over a job; will try again");
                    let _ = self.store.disown_job(job.id, self.instance).await;
                }
            }
        }
        Ok(sweep)
    }

    /// What happens to an adopted job: followed on (`true`) or failed as
    /// interrupted (`false`).
    async fn take_over(&self, job: &Job, from: Option<Uuid>) -> Result<bool> {
        if self.resume_job(job).await? {
            metrics::counter!("anvil_jobs_taken_over_total", "outcome" => "resumed").increment(1);
            tracing::info!(job = %job.id, kind = %job.kind, ?from, "took over a run's job");
            return Ok(true);
        }
        let why = "interrupted: the anvil instance running it stopped";
        self.store.finish_job(job.id, Err(why), now()).await?;
        metrics::counter!("anvil_jobs_taken_over_total", "outcome" => "failed").increment(1);
        tracing::warn!(job = %job.id, kind = %job.kind, ?from, "failed a job its instance left unfinished");
        Ok(false)
    }

    /// Follows an adopted job on, if it is the job of a run. `false`: not a
    /// run's job (or its run or machine is gone): fail it.
    async fn resume_job(&self, job: &Job) -> Result<bool> {
        let queued = job.status == JobStatus::Queued;
        if let Some(run) = self.store.commissioning_run_for_job(job.id).await? {
            let Some(m) = self.store.get_machine(run.machine_id).await? else {
                return Ok(false);
            };
            let purpose = run_purpose(&run);
            let (app, job_id, actor) = (self.clone(), job.id, job.actor.clone());
            tokio::spawn(async move {
                if queued {
                    app.run_agent_job(job_id, m, run.id, purpose, actor, false)
                        .await
                } else {
                    app.follow_agent_run(job_id, m, run.id, purpose).await
                }
            });
            return Ok(true);
        }
        if let Some(run) = self.store.installer_run_for_job(job.id).await? {
            let Some(m) = self.store.get_machine(run.machine_id).await? else {
                return Ok(false);
            };
            let (app, job_id, actor) = (self.clone(), job.id, job.actor.clone());
            tokio::spawn(async move {
                if queued {
                    app.run_installer_job(job_id, m, run.id, actor).await
                } else {
                    app.follow_installer_run(job_id, m, run.id).await
                }
            });
            return Ok(true);
        }
        Ok(false)
    }
}

/// This host's name, for telling instances apart in the store.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
