//! The connection task: connects with backoff, authenticates, and serves the socket
//! (deliveries, acks, sends, receipts) until it closes or the client shuts down.

use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;
use sotto_proto::{ErrorCode, Frame};
use tokio::sync::watch;

use super::Inner;
use super::inbound::{ACK_BATCH, Unacked};
use super::outbox::{Anon, SEND_WINDOW, Sending};
use crate::machine::{ConnectionState, DisconnectCause, Event, StopCause, open_ahead};
use crate::rt::{self, Instant};
use crate::store::Store;
use crate::transport::{Socket, TransportError};

/// How often a connected client checks its prekeys (refills and rotation) besides at
/// every connect.
const PREKEY_CHECK: Duration = Duration::from_secs(3600);

/// How serving one authenticated connection ended.
pub(super) enum Served {
    /// The client shut down.
    Shutdown,
    /// The connection ended: reconnect after a backoff.
    Lost(DisconnectCause),
    /// Reconnecting would be wrong: stop.
    Stop(StopCause),
}

impl<S: Store> Inner<S> {
    pub(super) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.options.backoff_min;
        // The anonymous connection outlives reconnects of the authenticated one.
        let mut anon: Option<Anon> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.emit_state(ConnectionState::Connecting).await;
            let connected = tokio::select! {
                r = self.relay.connect_with_epoch(&self.device) => r,
                _ = shutdown.changed() => return,
            };
            let cause = match connected {
                // A new epoch means the relay numbers the mailbox anew (a restart after a
                // database restore, a re-registration): the seq counted so far restarts
                // before any delivery is read, so nothing new is dropped as already seen.
                Ok((socket, epoch)) => match self.transact(|m| Ok((m.receive_mailbox_epoch(epoch), ()))).await {
                    Err(_) => {
                        drop(socket);
                        DisconnectCause::Store
                    }
                    Ok(_) => {
                        backoff = self.options.backoff_min;
                        self.emit_state(ConnectionState::Connected).await;
                        self.emit(vec![Event::Connected]).await;
                        let served = self.serve(socket, &mut shutdown, &mut anon).await;
                        // Nothing is in flight once the connection is gone.
                        self.note_sending(std::iter::empty());
                        match served {
                            Served::Shutdown => return,
                            Served::Stop(cause) => {
                                self.emit_state(ConnectionState::Stopped { cause }).await;
                                return;
                            }
                            Served::Lost(cause) => cause,
                        }
                    }
                },
                Err(TransportError::Relay { code, .. })
                    if code == ErrorCode::AUTH_FAILED || code == ErrorCode::UNKNOWN_DEVICE =>
                {
                    // Removed from the account's device list?
                    if self.refresh_device_list(self.device.account_id()).await.is_ok() {
                        let listed = self.machine.lock().await.is_listed();
                        if !listed {
                            let cause = StopCause::DeviceRemoved;
                            self.emit_state(ConnectionState::Stopped { cause }).await;
                            return;
                        }
                    }
                    DisconnectCause::AuthFailed
                }
                Err(_) => DisconnectCause::Unreachable,
            };
            let span = backoff.as_millis() as u64;
            let draw = self.net_rng.lock().unwrap_or_else(|e| e.into_inner()).next_u64();
            let delay = Duration::from_millis(span / 2 + draw % (span / 2 + 1));
            let retry_in_ms = delay.as_millis() as u64;
            self.emit_state(ConnectionState::Disconnected { retry_in_ms, cause })
                .await;
            tokio::select! {
                () = rt::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    async fn emit_state(&self, state: ConnectionState) {
        self.emit(vec![Event::ConnectionState { state }]).await;
    }

    /// Serves one authenticated connection, and sends over the anonymous one (opened
    /// when there is something to send, not right after this one authenticated).
    pub(super) async fn serve(
        &self,
        mut socket: Socket,
        shutdown: &mut watch::Receiver<bool>,
        anon: &mut Option<Anon>,
    ) -> Served {
        // Another device of the account may have changed the device list meanwhile.
        let _ = self.refresh_device_list(self.device.account_id()).await;
        let _ = self.refill_prekeys().await;
        if !self.retry_pending().await {
            return Served::Lost(DisconnectCause::Store);
        }
        // Answers to sends made before this connection are not waited for: those items
        // are still in the outbox and go again.
        let mut tx = {
            let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
            Sending::new(&mut rng, &self.options)
        };
        let mut ping_at = Instant::now() + self.options.heartbeat;
        // A long-lived connection still rotates the signed and last-resort prekeys.
        let mut prekeys_at = Instant::now() + PREKEY_CHECK;
        // Deliveries processed (committed deferred) but not acked yet.
        let mut unacked = Unacked::default();
        // Presence goes out at once, then every interval (when shared).
        let mut presence_at = Instant::now();
        loop {
            // Receipts go out in batches, a random delay after the first message they
            // acknowledge (never a fixed delay a watcher could pair deliveries with): the
            // outbox item of a new one is read to schedule it.
            if self.new_receipts.swap(false, std::sync::atomic::Ordering::SeqCst) {
                tx.dirty = true;
            }
            let filled = self.fill_window(&mut tx, &mut socket, anon).await;
            self.note_sending(tx.in_flight.iter().map(|f| (f.item.id, f.item.to)));
            if !filled {
                return Served::Lost(DisconnectCause::Closed);
            }
            let retry_at = tx.retry_at;
            let retry = async {
                match retry_at {
                    Some(t) => rt::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let anon_expires = anon.as_ref().map(|a| a.expires);
            let anon_frame = async {
                match anon.as_mut() {
                    Some(a) => a.socket.recv().await,
                    None => std::future::pending().await,
                }
            };
            let anon_expiry = async {
                match anon_expires {
                    Some(t) => rt::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let room = tx.in_flight.len() < SEND_WINDOW;
            // Biased: frames first, so deliveries already waiting join the ack batch; the
            // ack branch runs only when no frame is ready. The anonymous socket comes before
            // the authenticated one: it carries at most SEND_WINDOW answers, and a long
            // backlog must not starve them. The timers come last: sends and retries are
            // pumped by `fill_window` at the top of every turn anyway.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = self.ack(&mut socket, &mut unacked).await;
                    socket.close().await;
                    if let Some(a) = anon.as_mut() {
                        a.socket.close().await;
                    }
                    return Served::Shutdown;
                }
                frame = anon_frame => match frame {
                    Ok(Some(Frame::SendResult(r))) => {
                        if !self.handle_result(&mut tx, r, true).await {
                            return Served::Lost(DisconnectCause::Store);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        // Sends without an answer stay in the outbox and go again.
                        *anon = None;
                        tx.in_flight.retain(|f| f.anon.is_none());
                        tx.release();
                        tx.dirty = true;
                    }
                },
                frame = socket.recv() => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) => return Served::Lost(DisconnectCause::Closed),
                    };
                    // The frames already here come with it (up to an ack batch): the
                    // sealed envelopes among them are opened on other threads while the
                    // ones before them are processed (the open needs no machine state).
                    let mut frames = vec![frame];
                    let mut closed = false;
                    if rt::THREADS && matches!(frames.first(), Some(Frame::Deliver(_))) {
                        while frames.len() < ACK_BATCH {
                            let next = tokio::select! {
                                biased;
                                f = socket.recv() => Some(f),
                                () = std::future::ready(()) => None,
                            };
                            match next {
                                Some(Ok(Some(f))) => frames.push(f),
                                Some(Ok(None) | Err(_)) => {
                                    closed = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    let keys = if frames.len() > 1 {
                        Some(self.machine.lock().await.device_keys())
                    } else {
                        None
                    };
                    let opening: Vec<_> = frames
                        .iter()
                        .enumerate()
                        .map(|(i, f)| match (f, &keys) {
                            // The first is opened here, at once.
                            (Frame::Deliver(d), Some(keys)) if i > 0 => {
                                let (keys, envelope) = (keys.clone(), d.envelope.clone());
                                Some(rt::off_thread(move || open_ahead(&keys, &envelope)))
                            }
                            _ => None,
                        })
                        .collect();
                    for (frame, opening) in frames.into_iter().zip(opening) {
                        let opened = match opening {
                            Some(o) => o.join().await.flatten(),
                            None => None,
                        };
                        if let Some(served) = self.on_frame(frame, opened, &mut socket, &mut tx, &mut unacked).await {
                            return served;
                        }
                    }
                    if closed {
                        return Served::Lost(DisconnectCause::Closed);
                    }
                }
                () = std::future::ready(()), if unacked.seq.is_some() => {
                    if !self.ack(&mut socket, &mut unacked).await {
                        return Served::Lost(DisconnectCause::Closed);
                    }
                }
                _ = self.wake.notified(), if room => {
                    tx.dirty = true;
                }
                () = rt::sleep_until(presence_at), if self.options.share_presence => {
                    presence_at = Instant::now() + self.options.presence_interval;
                    if !self.send_presence(&mut socket).await {
                        return Served::Lost(DisconnectCause::Closed);
                    }
                }
                _ = self.ephemeral.wake.notified() => {
                    if !self.flush_ephemeral(&mut socket).await {
                        return Served::Lost(DisconnectCause::Closed);
                    }
                }
                _ = retry => {}
                _ = anon_expiry => {
                    // Past its lifetime: closed once its answers are in (and replaced by
                    // the next send); checked again in a moment meanwhile.
                    if let Some(a) = anon.as_mut() {
                        if tx.in_flight.iter().any(|f| f.anon.is_some()) {
                            a.expires = Instant::now() + Duration::from_secs(1);
                        } else {
                            a.socket.close().await;
                            *anon = None;
                        }
                    }
                }
                () = rt::sleep_until(ping_at) => {
                    ping_at = Instant::now() + self.options.heartbeat;
                    if socket.idle_for().is_some_and(|d| d > self.options.idle_timeout) {
                        return Served::Lost(DisconnectCause::IdleTimeout);
                    }
                    if socket.ping().await.is_err() {
                        return Served::Lost(DisconnectCause::Closed);
                    }
                    // The anonymous connection is not pinged with this one (that would pair
                    // them); the relay's pings keep it alive, and a silent one is dropped.
                    if anon.as_ref().is_some_and(|a| a.socket.idle_for().is_some_and(|d| d > self.options.idle_timeout)) {
                        *anon = None;
                        tx.in_flight.retain(|f| f.anon.is_none());
                        tx.release();
                        tx.dirty = true;
                    }
                    // The relay keeps a removed device's socket open but drops its mailbox:
                    // check the account's list on every heartbeat.
                    let _ = self.refresh_device_list(self.device.account_id()).await;
                    if !self.machine.lock().await.is_listed() {
                        socket.close().await;
                        return Served::Lost(DisconnectCause::Closed);
                    }
                    if !self.retry_pending().await {
                        return Served::Lost(DisconnectCause::Store);
                    }
                    if Instant::now() >= prekeys_at {
                        prekeys_at = Instant::now() + PREKEY_CHECK;
                        let _ = self.refill_prekeys().await;
                    }
                    self.maybe_refill_tokens().await;
                }
            }
        }
    }

    /// Handles one frame from the authenticated connection; `opened` is a delivery's
    /// sealed envelope opened ahead. `Some` ends the connection.
    async fn on_frame(
        &self,
        frame: Frame,
        opened: Option<Result<sotto_crypto::Opened, sotto_crypto::OpenError>>,
        socket: &mut Socket,
        tx: &mut Sending,
        unacked: &mut Unacked,
    ) -> Option<Served> {
        match frame {
            Frame::Deliver(d) => {
                if self.handle_deliver(d.seq, &d.envelope, opened).await.is_err() {
                    // Not acked: delivered again after the reconnect.
                    return Some(Served::Lost(DisconnectCause::Store));
                }
                unacked.seq = Some(d.seq);
                unacked.count += 1;
                if unacked.count >= ACK_BATCH && !self.ack(socket, unacked).await {
                    return Some(Served::Lost(DisconnectCause::Closed));
                }
            }
            Frame::QueueEmpty => {
                self.emit(vec![Event::CaughtUp]).await;
            }
            Frame::EphemeralDeliver { payload } => {
                self.handle_ephemeral(&payload).await;
            }
            Frame::SendResult(r) => {
                let stored_ok = self.handle_result(tx, r, false).await;
                if !stored_ok {
                    return Some(Served::Lost(DisconnectCause::Store));
                }
            }
            // Another connection authenticated as this device: a second process on this
            // device's store, or a copy of it. Taking the socket back would replace that
            // one in turn, for ever.
            Frame::Error { code } if code == ErrorCode::REPLACED => {
                return Some(Served::Stop(StopCause::Superseded));
            }
            Frame::Error { code } if code == ErrorCode::SHUTTING_DOWN => {
                return Some(Served::Lost(DisconnectCause::RelayShuttingDown));
            }
            Frame::Error { code } if code == ErrorCode::IDLE_TIMEOUT => {
                return Some(Served::Lost(DisconnectCause::IdleTimeout));
            }
            _ => {}
        }
        None
    }
}
