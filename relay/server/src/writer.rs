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
//!
//! Admission: past its capacity the writer would queue sends without end, and every
//! send, and the live deliveries behind it, would wait longer and longer. So the task
//! watches how long the oldest write of each batch waited (its sojourn), as CoDel does
//! for packets (Nichols and Jacobson, "Controlling Queue Delay", ACM Queue 2012): while
//! that stays above `target` for a whole `interval`, or one commit has been running for
//! an `interval`, new sends are refused at once with
//! `BUSY` ([`Writer::admits`]) instead of joining the queue. The queue then drains at
//! full speed; once a batch's oldest write waited less than `target`, or the queue is
//! empty, sends are taken again. Acks are always taken: they are small and they free
//! what the mailboxes hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// A write and when it was queued.
struct Queued {
    at: Instant,
    job: Job,
}

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

/// The admission control of sends (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Admission {
    /// Zero: every send is taken.
    target: Duration,
    interval: Duration,
    /// Set by the task while the queue stands above `target`.
    refusing: AtomicBool,
    /// When the commit running now started, in ns since `epoch` plus one; 0 while the
    /// task is not committing.
    commit_since: AtomicU64,
    epoch: Instant,
}

impl Admission {
    pub(crate) fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval,
            refusing: AtomicBool::new(false),
            commit_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether a new send may join the queue.
    fn admits(&self, now: Instant) -> bool {
        if self.target.is_zero() {
            return true;
        }
        if self.refusing.load(Ordering::Relaxed) {
            return false;
        }
        // A commit that hangs (a disk stall, a lock held elsewhere) shows no sojourn
        // until it ends: refuse once it ran for an interval, since a new send would
        // wait behind it at least that long.
        let since = self.commit_since.load(Ordering::Relaxed);
        since == 0 || Duration::from_nanos(self.ns(now).saturating_sub(since)) < self.interval
    }
}

/// The task's side of the admission control: CoDel's state.
struct Controller<'a> {
    admission: &'a Admission,
    /// When the sojourn, above target since, will have been so for an interval.
    above_until: Option<Instant>,
    /// When the last warning was logged: at most one a minute, however often the writer
    /// goes in and out of saturation (the metrics count every refusal).
    warned_at: Option<Instant>,
}

/// The least time between two warnings that the writer is saturated.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl<'a> Controller<'a> {
    fn new(admission: &'a Admission) -> Self {
        Self {
            admission,
            above_until: None,
            warned_at: None,
        }
    }

    /// Takes the sojourn of a batch's oldest write, at `now`.
    fn observe(&mut self, sojourn: Duration, now: Instant) {
        let a = self.admission;
        if a.target.is_zero() {
            return;
        }
        if sojourn < a.target {
            self.clear();
            return;
        }
        match self.above_until {
            None => self.above_until = Some(now + a.interval),
            Some(until) if now >= until => {
                if !a.refusing.swap(true, Ordering::Relaxed)
                    && self
                        .warned_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY)
                {
                    self.warned_at = Some(now);
                    tracing::warn!(
                        sojourn_ms = sojourn.as_millis() as u64,
                        "the writer is saturated: new sends are refused with BUSY until its queue drains \
                         (sotto_relay_sends_busy_total counts them; this is logged at most once a minute)"
                    );
                }
            }
            Some(_) => {}
        }
    }

    /// The queue is empty, or its oldest write waited less than target.
    fn clear(&mut self) {
        self.above_until = None;
        self.admission.refusing.store(false, Ordering::Relaxed);
    }
}

/// The handle connections write through.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Queued>,
    admission: Arc<Admission>,
}

impl Writer {
    /// Starts the task on its own thread, with its own connection to `store`'s database.
    /// It ends on [`Writer::close`] or when every handle is dropped.
    pub(crate) fn spawn(
        store: &Store,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        pusher: Arc<Pusher>,
        admission: Admission,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let admission = Arc::new(admission);
        let task_admission = admission.clone();
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
                    run(&own, &hub, &metrics, &pusher, &task_admission, rx).await;
                    own.close().await;
                });
            });
        if let Err(e) = thread {
            // Every write then fails with `BatchFailed`; nothing is stored half.
            tracing::error!(error = %e, "cannot start the writer thread");
        }
        Self { tx, admission }
    }

    /// Whether a new send may be queued now; `false` while the writer is saturated (the
    /// send is then refused with `BUSY`, which the client retries after a pause).
    pub(crate) fn admits(&self) -> bool {
        self.admission.admits(Instant::now())
    }

    async fn queue(&self, job: Job) -> Result<(), mpsc::error::SendError<Queued>> {
        self.tx
            .send(Queued {
                at: Instant::now(),
                job,
            })
            .await
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
        self.queue(job).await.map_err(|_| StorageError::BatchFailed)?;
        answer.await.map_err(|_| StorageError::BatchFailed)?
    }

    /// Queues a cumulative ack; waits only for room in the queue.
    pub(crate) async fn ack(&self, account: AccountId, device: DeviceId, seq: u64) {
        let _ = self.queue(Job::Ack { account, device, seq }).await;
    }

    /// Writes queued and not yet taken into a batch.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Waits until every write queued before this call is committed (or failed).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, closes the writer's connection and ends the task; later
    /// writes fail with [`StorageError::BatchFailed`].
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    pusher: &Pusher,
    admission: &Admission,
    mut rx: mpsc::Receiver<Queued>,
) {
    let mut jobs = Vec::with_capacity(64);
    let mut closing = None;
    let mut control = Controller::new(admission);
    loop {
        if rx.is_empty() {
            // Nothing stands in the queue: take sends again.
            control.clear();
        }
        let Some(first) = rx.recv().await else { break };
        let now = Instant::now();
        control.observe(now.saturating_duration_since(first.at), now);
        let first = first.job;
        let (mut bytes, mut rows) = (first.bytes(), first.rows());
        jobs.push(first);
        while jobs.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES && rows < MAX_BATCH_ROWS {
            match rx.try_recv() {
                Ok(Queued { job, .. }) => {
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
        admission
            .commit_since
            .store(admission.ns(Instant::now()), Ordering::Relaxed);
        commit(store, hub, metrics, pusher, &mut jobs).await;
        admission.commit_since.store(0, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn admission() -> Admission {
        Admission::new(50 * MS, 200 * MS)
    }

    #[test]
    fn a_queue_below_target_takes_every_send() {
        let a = admission();
        let mut c = Controller::new(&a);
        let t0 = a.epoch;
        for i in 0..100 {
            c.observe(49 * MS, t0 + i * 10 * MS);
            assert!(a.admits(t0 + i * 10 * MS));
        }
    }

    #[test]
    fn sends_are_refused_once_the_queue_stood_above_target_for_an_interval() {
        let a = admission();
        let mut c = Controller::new(&a);
        let t0 = a.epoch;
        c.observe(60 * MS, t0);
        c.observe(80 * MS, t0 + 199 * MS);
        assert!(a.admits(t0 + 199 * MS), "above target for less than an interval");
        c.observe(80 * MS, t0 + 200 * MS);
        assert!(!a.admits(t0 + 200 * MS), "above target for a whole interval");
        // Still above: still refused, whatever the queue's length.
        c.observe(70 * MS, t0 + 300 * MS);
        assert!(!a.admits(t0 + 300 * MS));
        // One batch whose oldest write waited less than target: taken again.
        c.observe(10 * MS, t0 + 310 * MS);
        assert!(a.admits(t0 + 310 * MS));
        // And the interval starts over.
        c.observe(60 * MS, t0 + 320 * MS);
        c.observe(60 * MS, t0 + 500 * MS);
        assert!(a.admits(t0 + 500 * MS));
        c.observe(60 * MS, t0 + 520 * MS);
        assert!(!a.admits(t0 + 520 * MS));
        // An empty queue clears it too.
        c.clear();
        assert!(a.admits(t0 + 520 * MS));
    }

    #[test]
    fn a_spike_shorter_than_the_interval_refuses_nothing() {
        let a = admission();
        let mut c = Controller::new(&a);
        let t0 = a.epoch;
        for i in 0..50u32 {
            // 150 ms above, then one batch below, again and again.
            let at = t0 + i * 160 * MS;
            c.observe(500 * MS, at);
            c.observe(500 * MS, at + 150 * MS);
            assert!(a.admits(at + 150 * MS));
            c.observe(5 * MS, at + 155 * MS);
        }
    }

    #[test]
    fn a_commit_that_hangs_refuses_sends() {
        let a = admission();
        let t0 = a.epoch + 1000 * MS;
        a.commit_since.store(a.ns(t0), Ordering::Relaxed);
        assert!(a.admits(t0 + 199 * MS), "not yet an interval");
        assert!(!a.admits(t0 + 200 * MS));
        assert!(!a.admits(t0 + 5000 * MS));
        a.commit_since.store(0, Ordering::Relaxed);
        assert!(a.admits(t0 + 5000 * MS), "the commit ended");
    }

    #[test]
    fn a_zero_target_turns_it_off() {
        let a = Admission::new(Duration::ZERO, 200 * MS);
        let mut c = Controller::new(&a);
        let t0 = a.epoch + 1000 * MS;
        a.commit_since.store(a.ns(t0), Ordering::Relaxed);
        for i in 0..10 {
            c.observe(10_000 * MS, t0 + i * 1000 * MS);
        }
        assert!(a.admits(t0 + 20_000 * MS));
    }
}
