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
//! its finish, power state and event become visible together. A crash
//! between the BMC answering and that commit (a few milliseconds) leaves
//! the job `queued` or `running` in the store; the next start fails it as
//! interrupted (`fail_orphaned_jobs`), so a result is never lost without a
//! trace, and the power state is read again by the poller.

use anvil_store::{JobUpdate, Store};
use tokio::sync::{mpsc, oneshot};

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
        if let Err(e) = store.apply_job_updates(&updates).await {
            // One bad update (or a busy database) must not take the others
            // with it: write them one by one.
            tracing::warn!(error = %e, updates = updates.len(), "job batch not written; writing one by one");
            for u in &updates {
                if let Err(e) = store.apply_job_updates(std::slice::from_ref(u)).await {
                    metrics::counter!("anvil_job_writes_failed_total").increment(1);
                    tracing::warn!(error = %e, update = ?u, "cannot record a job update");
                }
            }
        }
        for p in batch.drain(..) {
            if let Some(done) = p.done {
                let _ = done.send(());
            }
        }
    }
}
