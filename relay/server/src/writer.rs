//! Group commit: one task owns the write path of sends and acks.
//!
//! Connections queue their writes on a bounded channel. The task takes whatever is queued
//! (at most [`MAX_BATCH_OPS`] writes, about [`MAX_BATCH_BYTES`] of bodies and heads and about
//! [`MAX_BATCH_ROWS`] mailbox rows), commits
//! it with one [`Storage::write_batch`] transaction and then answers each send. There is
//! no timer: while one batch commits the next one fills, so batches grow with the load and
//! add no latency to a lone write. On SQLite this also means one writer instead of pooled
//! connections contending for the database's write lock.
//!
//! The task runs on its own thread with its own single-threaded runtime and its own
//! database connection: on the shared runtime it would wait behind every runnable
//! connection task after each statement, which under load cost more than the statements.
//!
//! After a commit the task hands every stored envelope to its recipient's connection on
//! this node ([`Hub::push_live`]), so live delivery needs no database read; a send's
//! shared body is held once for all of them ([`Hub::share_body`]). A recipient not
//! connected here is handed to the push trigger ([`Pusher::trigger`]: a lock and a
//! `try_send`, never I/O). A send is
//! answered only after its batch committed: `Stored` always means stored.
//!
//! Acks are not answered: a connection queues its ack and goes on. [`Writer::flush`]
//! waits until everything queued before it is committed; graceful shutdown calls it after
//! the last connection closed.

use std::sync::Arc;

use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::Recipient;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Metrics, gauge_add, inc};
use crate::push::Pusher;
use crate::state::{Hub, LiveEnvelope, LiveOutcome};
use crate::storage::{SendParams, SendStored, Storage, StorageError, Store, WriteOp, WriteOutcome};

/// The most writes committed in one transaction.
pub const MAX_BATCH_OPS: usize = 512;
/// A batch stops taking sends once their bytes (each shared body once, and the heads) add
/// up to this many.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// A batch stops taking sends once they name this many recipients: a fan-out with a shared
/// body is few bytes but one row per recipient, and rows are what a commit writes.
pub const MAX_BATCH_ROWS: usize = 16_384;
/// The most writes queued for the task; further writers wait.
pub const QUEUE: usize = 4096;

enum Job {
    Send {
        params: SendParams,
        /// The shared body; recipient `i`'s envelope is `recipients[i].head ‖ body`.
        body: Vec<u8>,
        recipients: Vec<Recipient>,
        /// Verifiers of the access keys the send presented.
        access: Vec<(AccountId, [u8; 32])>,
        reply: oneshot::Sender<Result<SendStored, StorageError>>,
    },
    Ack {
        account: AccountId,
        device: DeviceId,
        seq: u64,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

impl Job {
    /// The mailbox rows a send writes.
    fn rows(&self) -> usize {
        match self {
            Job::Send { recipients, .. } => recipients.len(),
            _ => 0,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            // The bytes held in memory: the body once, and the heads.
            Job::Send { body, recipients, .. } => recipients
                .iter()
                .fold(body.len(), |n, r| n.saturating_add(r.head.len())),
            _ => 0,
        }
    }
}

/// The handle connections write through.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the task on its own thread, with its own connection to `store`'s database.
    /// It ends on [`Writer::close`] or when every handle is dropped.
    pub(crate) fn spawn(store: &Store, hub: Arc<Hub>, metrics: Arc<Metrics>, pusher: Arc<Pusher>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = store.clone();
        let thread = std::thread::Builder::new()
            .name("sotto-writer".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the writer runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let own = store.with_own_pool(1);
                    run(&own, &hub, &metrics, &pusher, rx).await;
                    own.close().await;
                });
            });
        if let Err(e) = thread {
            // Every write then fails with `BatchFailed`; nothing is stored half.
            tracing::error!(error = %e, "cannot start the writer thread");
        }
        Self { tx }
    }

    /// Stores a send in the next batch and waits for its commit.
    pub(crate) async fn send(
        &self,
        params: SendParams,
        body: Vec<u8>,
        recipients: Vec<Recipient>,
        access: Vec<(AccountId, [u8; 32])>,
    ) -> Result<SendStored, StorageError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Send {
            params,
            body,
            recipients,
            access,
            reply,
        };
        self.tx.send(job).await.map_err(|_| StorageError::BatchFailed)?;
        answer.await.map_err(|_| StorageError::BatchFailed)?
    }

    /// Queues a cumulative ack; waits only for room in the queue.
    pub(crate) async fn ack(&self, account: AccountId, device: DeviceId, seq: u64) {
        let _ = self.tx.send(Job::Ack { account, device, seq }).await;
    }

    /// Writes queued and not yet taken into a batch.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Waits until every write queued before this call is committed (or failed).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, closes the writer's connection and ends the task; later
    /// writes fail with [`StorageError::BatchFailed`].
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(store: &Store, hub: &Hub, metrics: &Metrics, pusher: &Pusher, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(64);
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let (mut bytes, mut rows) = (first.bytes(), first.rows());
        jobs.push(first);
        while jobs.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES && rows < MAX_BATCH_ROWS {
            match rx.try_recv() {
                Ok(job) => {
                    bytes = bytes.saturating_add(job.bytes());
                    rows = rows.saturating_add(job.rows());
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if let Some(i) = jobs.iter().position(|j| matches!(j, Job::Close(_))) {
            // Writes queued after the close are dropped unanswered (their senders see
            // `BatchFailed`); there are none after a graceful shutdown.
            jobs.truncate(i + 1);
            if let Some(Job::Close(done)) = jobs.pop() {
                closing = Some(done);
            }
        }
        commit(store, hub, metrics, pusher, &mut jobs).await;
        if closing.is_some() {
            break;
        }
    }
    rx.close();
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Commits `jobs` (emptying it) and answers them. When the whole batch fails, each write
/// is retried alone, so one write the database refuses cannot fail the others.
async fn commit(store: &Store, hub: &Hub, metrics: &Metrics, pusher: &Pusher, jobs: &mut Vec<Job>) {
    let started = std::time::Instant::now();
    let result = {
        let ops = ops_of(jobs);
        metrics.write_batch_ops.store(
            i64::try_from(ops.len()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        store.write_batch(&ops).await
    };
    metrics.write_batch_seconds.observe(started.elapsed());
    match result {
        Ok(outcomes) => answer(hub, metrics, pusher, std::mem::take(jobs), outcomes),
        Err(e) if jobs.len() > 1 => {
            let _ = crate::error::code_of(&e);
            for job in std::mem::take(jobs) {
                let mut one = vec![job];
                let ops = ops_of(&one);
                match store.write_batch(&ops).await {
                    Ok(outcomes) => answer(hub, metrics, pusher, std::mem::take(&mut one), outcomes),
                    Err(e) => fail(one, &e),
                }
            }
        }
        Err(e) => fail(std::mem::take(jobs), &e),
    }
}

fn ops_of(jobs: &[Job]) -> Vec<WriteOp<'_>> {
    jobs.iter()
        .filter_map(|job| match job {
            Job::Send {
                params,
                body,
                recipients,
                access,
                ..
            } => Some(WriteOp::Send {
                params: *params,
                body,
                recipients,
                access,
            }),
            Job::Ack { account, device, seq } => Some(WriteOp::Ack {
                account: *account,
                device: *device,
                seq: *seq,
            }),
            Job::Flush(_) | Job::Close(_) => None,
        })
        .collect()
}

fn answer(hub: &Hub, metrics: &Metrics, pusher: &Pusher, jobs: Vec<Job>, outcomes: Vec<WriteOutcome>) {
    let mut outcomes = outcomes.into_iter();
    // Cluster mode: recipients not connected here, told to the other nodes at the end.
    let mut elsewhere = Vec::new();
    for job in jobs {
        match job {
            Job::Flush(done) | Job::Close(done) => {
                let _ = done.send(());
            }
            Job::Ack { .. } => {
                if let Some(WriteOutcome::Ack(n)) = outcomes.next() {
                    inc(&metrics.envelopes_acked_total, n);
                    gauge_add(&metrics.mailbox_envelopes, -i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            Job::Send {
                params,
                body,
                recipients,
                reply,
                ..
            } => {
                let result = match outcomes.next() {
                    Some(WriteOutcome::Send(r)) => r,
                    _ => Err(StorageError::BatchFailed),
                };
                if let Ok(SendStored::Stored(seqs)) = &result {
                    inc(&metrics.envelopes_stored_total, seqs.len() as u64);
                    gauge_add(
                        &metrics.mailbox_envelopes,
                        i64::try_from(seqs.len()).unwrap_or(i64::MAX),
                    );
                    // The body is held once for every recipient connected here.
                    let body = hub.share_body(body);
                    for (r, &seq) in recipients.into_iter().zip(seqs) {
                        let live = body.as_ref().ok().map(|body| LiveEnvelope {
                            seq,
                            received_at_s: params.now_s,
                            head: r.head,
                            body: body.clone(),
                        });
                        match hub.push_live(&r.account_id, r.device_id, live) {
                            LiveOutcome::Queued => {}
                            LiveOutcome::Overflow => inc(&metrics.live_budget_overflow_total, 1),
                            // Waits in the mailbox: wake the device (a non-blocking hand-off).
                            LiveOutcome::NotConnected if hub.cluster.is_some() => {
                                elsewhere.push((r.account_id, r.device_id));
                            }
                            LiveOutcome::NotConnected => pusher.trigger(&r.account_id, r.device_id),
                        }
                    }
                }
                let _ = reply.send(result);
            }
        }
    }
    if let Some(cluster) = &hub.cluster
        && !elsewhere.is_empty()
    {
        cluster.stored_elsewhere(pusher, &elsewhere);
    }
}

fn fail(jobs: Vec<Job>, e: &StorageError) {
    let _ = crate::error::code_of(e);
    for job in jobs {
        match job {
            Job::Send { reply, .. } => {
                let _ = reply.send(Err(StorageError::BatchFailed));
            }
            Job::Flush(done) | Job::Close(done) => {
                let _ = done.send(());
            }
            Job::Ack { .. } => {}
        }
    }
}
