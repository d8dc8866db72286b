//! Profiles on the relay (docs/protocol.md §15.9): this account's upload and the fetches
//! of announced profiles, in a task of their own, so a slow relay answer holds up neither
//! receiving nor sending.

use std::time::Duration;

use sotto_crypto::ProfileKey;
use tokio::sync::watch;

use super::{ClientError, Inner};
use crate::machine::Event;
use crate::rt::{self, now_ms};
use crate::store::Store;

/// How often announced profiles that could not be fetched, and an upload that failed,
/// are tried again (a new announcement or profile starts a round at once).
const PROFILE_RETRY: Duration = Duration::from_secs(60);
/// The most rounds run one after the other without waiting.
const MAX_BACK_TO_BACK: u32 = 8;

impl<S: Store> Inner<S> {
    /// Uploads and fetches profiles whenever [`Inner::profiles_wake`] is notified (a
    /// profile set here, a key announced), and every [`PROFILE_RETRY`] while something is
    /// left to do.
    pub(super) async fn profile_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let mut retry = true;
        // Rounds run back to back while each succeeds and work is left (more than one
        // batch of fetches), at most this many before a pause.
        let mut back_to_back = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if retry || self.profile_work_left().await {
                retry = self.sync_profiles().await.is_err();
            }
            let left = retry || self.profile_work_left().await;
            if left && !retry && back_to_back < MAX_BACK_TO_BACK {
                back_to_back += 1;
                continue;
            }
            back_to_back = 0;
            tokio::select! {
                () = self.profiles_wake.notified() => {}
                () = rt::sleep(PROFILE_RETRY), if left => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn profile_work_left(&self) -> bool {
        let m = self.machine.lock().await;
        m.profile_upload_due() || !m.profiles_to_fetch().is_empty()
    }

    /// One round: uploads this account's profile if the relay does not hold it yet (and
    /// then announces its key), and fetches up to one batch of announced profiles, each
    /// on a connection of its own and without authentication. A retryable error leaves the
    /// rest for the next round.
    pub(crate) async fn sync_profiles(&self) -> Result<(), ClientError> {
        // One round at a time (the background task, and an app's `sync_profiles`): two
        // uploads reordered around a key change would leave the relay on the old key.
        let _round = self.profile_round.lock().await;
        // A failed upload does not keep the fetches from running.
        let uploaded = self.upload_profile().await;
        let fetched = self.fetch_profiles().await;
        uploaded.and(fetched)
    }

    /// Uploads this account's profile if the relay lacks it, then announces its key.
    async fn upload_profile(&self) -> Result<(), ClientError> {
        let upload = self.machine.lock().await.profile_upload();
        if let Some((upload, updated_ms)) = upload {
            self.relay.put_profile(&self.device, &upload).await?;
            self.transact(|m| {
                Ok((
                    m.profile_uploaded(&upload.version, updated_ms, now_ms())
                        .unwrap_or_default(),
                    (),
                ))
            })
            .await?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Fetches up to one batch of announced profiles.
    async fn fetch_profiles(&self) -> Result<(), ClientError> {
        let fetches = self.machine.lock().await.profiles_to_fetch();
        for fetch in fetches {
            let version = ProfileKey::from_bytes(&fetch.key).version(&fetch.account);
            let ciphertext = match self.relay.get_profile(&fetch.account, &version).await {
                Ok(ct) => ct,
                // The relay or the network: the rest waits for the next round.
                Err(e) if e.is_retryable() => return Err(e.into()),
                // A final answer about this one (an answer that does not decode): settled
                // like a miss, so it holds up none of the others.
                Err(_) => None,
            };
            let (changed, _) = self
                .transact(|m| Ok(m.profile_fetched(&fetch, ciphertext.as_deref())))
                .await?;
            if let Some(account) = changed {
                self.emit(vec![Event::ProfileChanged { account }]).await;
            }
        }
        Ok(())
    }
}
