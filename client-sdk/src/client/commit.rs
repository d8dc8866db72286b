//! Committing machine changes to the store: the store lock, conflict reloads and events.

use std::sync::atomic::Ordering;

use super::error::ClientError;
use super::{Inner, load_snapshot, pickle_key};
use crate::machine::{Event, Machine};
use crate::store::{Changes, Committed, Store, StoreError};

/// Commits retried after a compare-and-swap conflict.
pub(super) const MAX_CONFLICT_RETRIES: u32 = 5;

impl<S: Store> Inner<S> {
    /// Emits events to the app's stream: once it was taken, waiting while it is full;
    /// before that, buffered up to the queue's size.
    pub(crate) async fn emit(&self, events: Vec<Event>) {
        // A device joined this account: it gets this account's groups from this device
        // (callers hold no machine lock while emitting).
        let own = self.device.account_id();
        let linked = events.iter().any(
            |e| matches!(e, Event::DeviceListChanged { account, change } if *account == own && !change.added.is_empty()),
        );
        if linked
            && self
                .transact(|m| Ok((m.welcome_own_devices(crate::client::now_ms()), ())))
                .await
                .is_ok()
        {
            self.wake.notify_one();
        }
        let taken = self.events_taken.load(Ordering::SeqCst);
        for e in events {
            let sent = if taken {
                self.events.send(e).await.is_ok()
            } else {
                // Buffered until the app takes the stream; beyond the queue, dropped.
                self.events.try_send(e).is_ok()
            };
            if !sent && taken {
                return;
            }
        }
    }

    /// Loads `m` again from the store, with generators seeded afresh from the entropy
    /// source (never from the old generator's output).
    pub(crate) async fn reload(&self, m: &mut Machine) -> Result<(), ClientError> {
        let snapshot = load_snapshot(&self.store).await?;
        let (rng, ids) = (self.entropy.rng()?, self.entropy.rng()?);
        *m = Machine::load(snapshot, pickle_key(&self.key), rng, ids)?;
        Ok(())
    }

    /// Commits `changes` made by `m` and applies them; on a conflict reloads `m` from
    /// the store and returns the conflict for the caller to retry.
    pub(crate) async fn commit_locked(&self, m: &mut Machine, changes: Changes) -> Result<Committed, ClientError> {
        self.commit_locked_as(m, changes, false).await
    }

    /// [`Self::commit_locked`], deferred ([`Store::commit_deferred`]) when `deferred`.
    pub(super) async fn commit_locked_as(
        &self,
        m: &mut Machine,
        changes: Changes,
        deferred: bool,
    ) -> Result<Committed, ClientError> {
        if changes.is_empty() {
            return Ok(Committed::default());
        }
        let mut changes = changes;
        m.guard_pins(&mut changes);
        let result = if deferred {
            self.store.commit_deferred(changes.clone()).await
        } else {
            self.store.commit(changes.clone()).await
        };
        match result {
            Ok(c) => {
                m.apply(&changes, &c);
                self.live.touch(&changes);
                if Machine::wants_profiles(&changes) {
                    self.profiles_wake.notify_one();
                }
                if changes.account.is_some() {
                    *self.access_key.lock().unwrap_or_else(|e| e.into_inner()) = m.own_access_key().map(|k| k.0);
                }
                Ok(c)
            }
            Err(StoreError::Conflict) => {
                self.reload(m).await?;
                Err(StoreError::Conflict.into())
            }
            Err(e) => {
                // The batch of deferred commits may have gone with it.
                self.lost(m).await;
                Err(e.into())
            }
        }
    }

    /// After a store failure that may have undone deferred commits: the machine is loaded
    /// again from what the store holds, and [`Inner::losses`] bumped, so work prepared
    /// from the lost state is not sent.
    async fn lost(&self, m: &mut Machine) {
        self.losses.fetch_add(1, Ordering::SeqCst);
        // A failed reload keeps the machine as it was; the next commit fails or conflicts
        // and comes back here.
        let _ = self.reload(m).await;
    }

    /// Makes every deferred commit durable ([`Store::sync`]), under the machine lock like
    /// every commit. On failure the deferred commits since the last sync are gone: the
    /// machine is reloaded.
    pub(crate) async fn sync_locked(&self, m: &mut Machine) -> Result<(), ClientError> {
        match self.store.sync().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.lost(m).await;
                Err(e.into())
            }
        }
    }

    /// Runs one machine operation and commits it, retrying after conflicts.
    pub(crate) async fn transact<T>(
        &self,
        mut op: impl FnMut(&mut Machine) -> Result<(Changes, T), ClientError>,
    ) -> Result<(T, Committed), ClientError> {
        let mut attempts = 0;
        loop {
            let mut m = self.machine.lock().await;
            let (changes, out) = op(&mut m)?;
            match self.commit_locked(&mut m, changes).await {
                Ok(c) => return Ok((out, c)),
                Err(ClientError::Store(StoreError::Conflict)) if attempts < MAX_CONFLICT_RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
