//! The power jobs' writer: one task that records jobs' starts and outcomes
//! (with the power state read and the job's event) in group commits.
//!
//! A bulk action over 1,000 machines used to cost four commits per job
//! (started, power state, finished, event), each an fsync on SQLite
//! (`synchronous = FULL`) and each waiting its turn behind the others on
//! the store's writer lock. Here every job sends its writes to one queue;
//! the writer takes everything queued, writes it in one transaction, and
//! takes the next lot while the jobs go on: commits group by themselves
//! (the DHCP lease writer works the same way), so 1,000 jobs finishing in
//! a burst cost a handful of commits.
//!
//! Durability: a job's outcome is committed before `finish` returns, and
//! its finish, power state and event become visible together. A store that
//! is busy or unreachable for a while (a SQLite lock held past the busy
//! timeout, PostgreSQL restarting) delays the commit: transient failures
//! are retried for up to a minute (`RETRY_FOR`). A crash
//! between the BMC answering and that commit (a few milliseconds) leaves
//! the job `queued` or `running` in the store; the next start fails it as
//! interrupted (`instances.rs`), so a result is never lost without a
//! trace, and the power state is read again by the poller.

use std::time::Duration;

use anvil_store::{JobUpdate, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Most updates written in one transaction: bounds how long one commit
/// keeps the store's writer lock from the API's own writes.
const MAX_BATCH: usize = 512;

struct Pending {
    update: JobUpdate,
    /// Told once the update is committed (or could not be).
    done: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
pub(crate) struct JobWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl JobWriter {
    /// Starts the writer task on the current runtime. It ends once every
    /// `JobWriter` handle is dropped and the queue is written.
    pub(crate) fn spawn(store: Store) -> JobWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, rx));
        JobWriter { queue }
    }

    /// Queues the move to `running`; does not wait for the commit (the job
    /// goes on with its BMC calls meanwhile; the queue keeps the order, so
    /// the start is always written before the finish).
    pub(crate) fn started(&self, id: uuid::Uuid, at: time::OffsetDateTime) {
        self.send(JobUpdate::Started { id, at }, None);
    }

    /// Queues a job's outcome and waits until it is committed.
    pub(crate) async fn finished(&self, update: JobUpdate) {
        let (tx, rx) = oneshot::channel();
        self.send(update, Some(tx));
        let _ = rx.await;
    }

    fn send(&self, update: JobUpdate, done: Option<oneshot::Sender<()>>) {
        if let Err(mpsc::error::SendError(p)) = self.queue.send(Pending { update, done }) {
            // The writer task is gone (runtime shutting down): the job stays
            // `running` and the next start fails it as interrupted.
            tracing::warn!(update = ?p.update, "job writer stopped; update not recorded");
        }
    }
}

async fn write_loop(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let updates: Vec<JobUpdate> = batch.iter().map(|p| p.update.clone()).collect();
        metrics::histogram!("anvil_job_write_batch_size").record(updates.len() as f64);
        write_batch(&store, &updates, RETRY_FOR).await;
        for p in batch.drain(..) {
            if let Some(done) = p.done {
                let _ = done.send(());
            }
        }
    }
}

/// How long a batch's writes are retried while the store fails in a way that
/// may pass (busy, locked, connection lost): long enough for a PostgreSQL
/// restart or a long-held SQLite lock, short enough that jobs waiting on
/// their commit are not stuck for good.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Writes a batch, retrying transient failures until `retry_for` has passed.
/// A permanent failure (one update the store refuses) does not take the
/// others with it: the batch is then written one update at a time. An update
/// still not written is counted and logged; its job stays `running` until
/// the next start fails it as interrupted.
async fn write_batch(store: &Store, updates: &[JobUpdate], retry_for: Duration) {
    let deadline = Instant::now() + retry_for;
    let e = match retrying(deadline, || store.apply_job_updates(updates)).await {
        Ok(()) => return,
        Err(e) => e,
    };
    if e.is_transient() || updates.len() == 1 {
        metrics::counter!("anvil_job_writes_failed_total").increment(updates.len() as u64);
        tracing::error!(error = %crate::error_chain(&e), updates = updates.len(),
            "cannot record job updates; those jobs stay running until the next start");
        return;
    }
    tracing::warn!(error = %crate::error_chain(&e), updates = updates.len(), "job batch not written; writing one by one");
    for u in updates {
        if let Err(e) = retrying(deadline, || {
            store.apply_job_updates(std::slice::from_ref(u))
        })
        .await
        {
            metrics::counter!("anvil_job_writes_failed_total").increment(1);
            tracing::error!(error = %crate::error_chain(&e), update = ?u, "cannot record a job update");
        }
    }
}

/// Runs `write` until it succeeds, fails permanently, or `deadline` passes,
/// sleeping 0.25, 0.5, 1, 2, 4, 8, 8, … s between tries.
async fn retrying<F, Fut>(deadline: Instant, mut write: F) -> anvil_store::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anvil_store::Result<()>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                metrics::counter!("anvil_job_write_retries_total").increment(1);
                tracing::warn!(error = %crate::error_chain(&e), retry_in_ms = pause.as_millis() as u64,
                    "job update not written; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_types::{Job, JobStatus};
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    /// Holds the write lock of the SQLite database at argv[1] for argv[2]
    /// seconds from another process, as a second program using the file (a
    /// backup tool, an operator's `sqlite3` shell) would.
    const HOLD_LOCK: &str = "import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
time.sleep(float(sys.argv[2]))
c.execute('COMMIT')
";

    /// A job's outcome that the store refuses for longer than its busy
    /// timeout (10 s) is written once the lock is let go, instead of being
    /// logged and lost with the job left `running` until the next restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outcome_blocked_past_the_busy_timeout_is_written_once_the_lock_goes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("anvil.db");
        let store = Store::open_sqlite(&db).await.unwrap();
        let at = time::OffsetDateTime::now_utc();
        let job = Job {
            id: uuid::Uuid::new_v4(),
            kind: "power-on".into(),
            machine_id: None,
            status: JobStatus::Queued,
            actor: "test".into(),
            params: serde_json::json!({}),
            result: None,
            error: None,
            created_at: at,
            started_at: None,
            finished_at: None,
        };
        store.insert_job(&job).await.unwrap();

        let mut holder = Command::new("python3")
            .args(["-c", HOLD_LOCK])
            .arg(&db)
            .arg("12")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");

        let writer = JobWriter::spawn(store.clone());
        writer.started(job.id, at);
        let waited = Instant::now();
        writer
            .finished(JobUpdate::Finished {
                id: job.id,
                outcome: Ok(serde_json::json!({"power_state": "on"})),
                at,
                power_state: None,
                event: None,
            })
            .await;
        let waited = waited.elapsed();
        assert!(holder.wait().unwrap().success());

        let stored = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Succeeded, "{stored:?}");
        assert_eq!(
            stored.result,
            Some(serde_json::json!({"power_state": "on"}))
        );
        assert!(stored.started_at.is_some());
        // It waited for the lock (the first try gave up after the 10 s busy
        // timeout), and not the whole retry window.
        assert!(
            waited > Duration::from_secs(10) && waited < RETRY_FOR,
            "{waited:?}"
        );
    }
}
