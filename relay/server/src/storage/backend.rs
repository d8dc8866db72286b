//! The two backends share their SQL: both accept `$N` placeholders, `RETURNING`,
//! `ON CONFLICT`, multi-row `VALUES` and `UPDATE … FROM`. They differ in how a write
//! transaction starts (SQLite takes the write lock up front with `BEGIN IMMEDIATE`) and in
//! PostgreSQL's row locks (`FOR UPDATE SKIP LOCKED` when taking a one-time prekey, `FOR
//! SHARE`/`FOR UPDATE` on account and device rows). Every writer locks device rows in
//! (account, device) order before it touches envelopes, so writers cannot deadlock. Body
//! rows are locked last, in id order, by whoever may delete them (each backend's
//! `release_all`), so that of two transactions deleting the last envelopes of one body
//! the second sees the first's deletes and removes it.

/// Implements [`super::Storage`] for `$store` (a struct with a `pool: sqlx::Pool<$db>`).
macro_rules! storage_impl {
    (
        store: $store:ty,
        db: $db:ty,
        begin: $begin:literal,
        skip_locked: $skip_locked:literal,
        for_share: $for_share:literal,
        for_update: $for_update:literal $(,)?
    ) => {
        impl $store {
            /// Begins a write transaction, and counts it.
            async fn begin(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.pool.begin_with($begin).await
            }

            /// Write transactions begun so far.
            pub fn write_transactions(&self) -> u64 {
                self.writes.load(std::sync::atomic::Ordering::Relaxed)
            }
        }

        impl $crate::storage::Storage for $store {
            async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn use_challenge(&self, nonce: &[u8; 32], issued_ms: u64) -> Result<bool, StorageError> {
                let done = sqlx::query(
                    "INSERT INTO used_challenges (nonce, issued_ms) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
                )
                .bind(&nonce[..])
                .bind(to_i64(issued_ms))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn forget_challenges(&self, before_ms: u64) -> Result<u64, StorageError> {
                let done = sqlx::query("DELETE FROM used_challenges WHERE issued_ms < $1")
                    .bind(to_i64(before_ms))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn put_device_list(&self, list: &DeviceList) -> Result<PutDeviceList, StorageError> {
                let account = list.account_id();
                let a = &account.0[..];
                let mut tx = self.begin().await?;
                let stored: Option<(i64, Vec<u8>)> = sqlx::query_as(concat!(
                    "SELECT version, device_list FROM accounts WHERE account_id = $1",
                    $for_update
                ))
                .bind(a)
                .fetch_optional(&mut *tx)
                .await?;
                let outcome = match stored {
                    None if list.version() > MAX_VERSION_STEP || list.epoch() > MAX_VERSION_STEP => {
                        return Err(StorageError::VersionJump {
                            stored: 0,
                            offered: list.version().max(list.epoch()),
                        });
                    }
                    Some((v, old)) => {
                        // The stored list verified when it was stored; it is checked
                        // again so that the update rule (§4.3) sees its epoch, list key
                        // and holders.
                        let old = sotto_crypto::SignedDeviceList::from_bytes(&old)
                            .map_err(sotto_crypto::DeviceListError::from)
                            .and_then(|s| s.verify(&account))
                            .map_err(|_| StorageError::Corrupt("device list"))?;
                        use sotto_crypto::DeviceListError as E;
                        match old.check_update(list) {
                            Ok(_) if to_u64(v) < list.version() => {}
                            Ok(_) | Err(E::Rollback { .. } | E::Equivocation { .. }) => {
                                return Err(StorageError::StaleDeviceList {
                                    stored: to_u64(v),
                                    offered: list.version(),
                                });
                            }
                            Err(E::VersionJump { .. } | E::EpochJump { .. }) => {
                                return Err(StorageError::VersionJump {
                                    stored: to_u64(v),
                                    offered: list.version(),
                                });
                            }
                            Err(e) => return Err(StorageError::ListKeyRevoked(e)),
                        }
                        sqlx::query("UPDATE accounts SET version = $2, device_list = $3 WHERE account_id = $1")
                            .bind(a)
                            .bind(to_i64(list.version()))
                            .bind(list.signed().as_bytes())
                            .execute(&mut *tx)
                            .await?;
                        PutDeviceList::Updated
                    }
                    None => {
                        let done = sqlx::query(
                            "INSERT INTO accounts (account_id, version, device_list) VALUES ($1, $2, $3) \
                             ON CONFLICT (account_id) DO NOTHING",
                        )
                        .bind(a)
                        .bind(to_i64(list.version()))
                        .bind(list.signed().as_bytes())
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() == 0 {
                            // A concurrent registration won.
                            return Err(StorageError::StaleDeviceList {
                                stored: list.version(),
                                offered: list.version(),
                            });
                        }
                        PutDeviceList::Created
                    }
                };
                let existing: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    concat!(
                        "SELECT device_id, signing_key, identity_key FROM devices WHERE account_id = $1 \
                         ORDER BY device_id",
                        $for_update
                    ),
                )
                .bind(a)
                .fetch_all(&mut *tx)
                .await?;
                let mut known = std::collections::BTreeSet::new();
                // Bodies referenced by the envelopes of removed or re-keyed devices.
                let mut bodies = Vec::new();
                for (id, dsk, ik) in existing {
                    let device = device_from_i64(id)?;
                    known.insert(device);
                    match list.device(device) {
                        None => {
                            // Its envelopes go with the row (ON DELETE CASCADE); the bodies
                            // only they referenced go at the end.
                            bodies.extend(Self::bodies_of(&mut *tx, a, id).await?);
                            // The counter outlives the row: a device re-added under this id
                            // numbers on from it, so a seq never repeats in its mailbox.
                            sqlx::query(
                                "INSERT INTO retired_mailboxes (account_id, device_id, next_seq) \
                                 SELECT account_id, device_id, next_seq FROM devices \
                                 WHERE account_id = $1 AND device_id = $2 \
                                 ON CONFLICT (account_id, device_id) DO UPDATE SET next_seq = excluded.next_seq",
                            )
                            .bind(a)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query("DELETE FROM devices WHERE account_id = $1 AND device_id = $2")
                                .bind(a)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        Some(e) if e.signing_key.as_bytes()[..] != dsk[..] || e.identity_key.0[..] != ik[..] => {
                            sqlx::query(
                                "UPDATE devices SET signing_key = $3, identity_key = $4, depth = 0, \
                                 acked_seq = next_seq - 1, bytes = 0, requests = 0, request_bytes = 0, \
                                 registration = $5 \
                                 WHERE account_id = $1 AND device_id = $2",
                            )
                            .bind(a)
                            .bind(id)
                            .bind(&e.signing_key.as_bytes()[..])
                            .bind(&e.identity_key.0[..])
                            .bind(&registration_nonce()?[..])
                            .execute(&mut *tx)
                            .await?;
                            bodies.extend(Self::bodies_of(&mut *tx, a, id).await?);
                            for q in [
                                "DELETE FROM prekeys WHERE account_id = $1 AND device_id = $2",
                                "DELETE FROM envelopes WHERE account_id = $1 AND device_id = $2",
                                "DELETE FROM push_registrations WHERE account_id = $1 AND device_id = $2",
                            ] {
                                sqlx::query(q).bind(a).bind(id).execute(&mut *tx).await?;
                            }
                        }
                        Some(_) => {}
                    }
                }
                // Those no envelope references any more go now, all at once (so their
                // locks are taken in id order, as every other writer takes them).
                Self::release_all(&mut *tx, bodies).await?;
                for e in list.devices().iter().filter(|e| !known.contains(&e.device_id)) {
                    let retired: Option<(i64,)> = sqlx::query_as(
                        "DELETE FROM retired_mailboxes WHERE account_id = $1 AND device_id = $2 RETURNING next_seq",
                    )
                    .bind(a)
                    .bind(device_i64(e.device_id))
                    .fetch_optional(&mut *tx)
                    .await?;
                    let next_seq = retired.map_or(1, |r| r.0.max(1));
                    sqlx::query(
                        "INSERT INTO devices (account_id, device_id, signing_key, identity_key, next_seq, \
                         acked_seq, registration) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(a)
                    .bind(device_i64(e.device_id))
                    .bind(&e.signing_key.as_bytes()[..])
                    .bind(&e.identity_key.0[..])
                    .bind(next_seq)
                    .bind(next_seq - 1)
                    .bind(&registration_nonce()?[..])
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(outcome)
            }

            async fn put_access(&self, account: &AccountId, access: AccountAccess) -> Result<(), StorageError> {
                let done = sqlx::query("UPDATE accounts SET access_verifier = $2, accept_requests = $3 WHERE account_id = $1")
                    .bind(&account.0[..])
                    .bind(access.verifier.map(|v| v.to_vec()))
                    .bind(i64::from(access.accept_requests))
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StorageError::UnknownAccount);
                }
                Ok(())
            }

            async fn access(&self, account: &AccountId) -> Result<Option<AccountAccess>, StorageError> {
                let row: Option<(Option<Vec<u8>>, i64)> =
                    sqlx::query_as("SELECT access_verifier, CAST(accept_requests AS BIGINT) FROM accounts WHERE account_id = $1")
                        .bind(&account.0[..])
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|(v, accept)| {
                    Ok(AccountAccess {
                        verifier: v.map(|v| key32(&v, "access verifier")).transpose()?,
                        accept_requests: accept != 0,
                    })
                })
                .transpose()
            }

            async fn device_list(&self, account: &AccountId) -> Result<Option<Vec<u8>>, StorageError> {
                let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT device_list FROM accounts WHERE account_id = $1")
                    .bind(&account.0[..])
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.0))
            }

            async fn device_keys(
                &self,
                account: &AccountId,
                device: DeviceId,
            ) -> Result<Option<DeviceKeys>, StorageError> {
                let row: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT signing_key, identity_key, registration FROM devices \
                     WHERE account_id = $1 AND device_id = $2",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(dsk, ik, reg)| device_keys_from(&dsk, &ik, &reg)).transpose()
            }

            async fn put_prekeys(
                &self,
                account: &AccountId,
                device: DeviceId,
                signing_key: &Ed25519PublicKey,
                upload: &PreKeyUpload,
                max_one_time: u32,
            ) -> Result<(), StorageError> {
                let a = &account.0[..];
                let d = device_i64(device);
                let mut tx = self.begin().await?;
                let row: Option<(Vec<u8>,)> = sqlx::query_as(concat!(
                    "SELECT signing_key FROM devices WHERE account_id = $1 AND device_id = $2",
                    $for_share
                ))
                .bind(a)
                .bind(d)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some((dsk,)) if dsk[..] == signing_key.as_bytes()[..] => {}
                    _ => return Err(StorageError::UnknownDevice),
                }
                let mut replace = Vec::new();
                if upload.signed_prekey.is_some() {
                    replace.push(KIND_SIGNED);
                }
                if upload.last_resort_kem_prekey.is_some() {
                    replace.push(KIND_KEM_LAST_RESORT);
                }
                for kind in replace {
                    sqlx::query("DELETE FROM prekeys WHERE account_id = $1 AND device_id = $2 AND kind = $3")
                        .bind(a)
                        .bind(d)
                        .bind(kind)
                        .execute(&mut *tx)
                        .await?;
                }
                for (kind, key_id, record) in prekey_rows(upload) {
                    sqlx::query(
                        "INSERT INTO prekeys (account_id, device_id, kind, key_id, record) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (account_id, device_id, kind, key_id) DO UPDATE SET record = excluded.record",
                    )
                    .bind(a)
                    .bind(d)
                    .bind(kind)
                    .bind(key_id)
                    .bind(record)
                    .execute(&mut *tx)
                    .await?;
                }
                for kind in [KIND_ONE_TIME, KIND_KEM_ONE_TIME] {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM prekeys WHERE account_id = $1 AND device_id = $2 AND kind = $3",
                    )
                    .bind(a)
                    .bind(d)
                    .bind(kind)
                    .fetch_one(&mut *tx)
                    .await?;
                    if to_u64(n) > u64::from(max_one_time) {
                        return Err(StorageError::TooManyPreKeys { max: max_one_time });
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn prekey_counts(&self, account: &AccountId, device: DeviceId) -> Result<PreKeyCounts, StorageError> {
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT kind, count(*) FROM prekeys WHERE account_id = $1 AND device_id = $2 GROUP BY kind",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .fetch_all(&self.pool)
                .await?;
                let mut c = PreKeyCounts::default();
                for (kind, n) in rows {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    match kind {
                        KIND_SIGNED => c.has_signed_prekey = n > 0,
                        KIND_ONE_TIME => c.one_time = n,
                        KIND_KEM_ONE_TIME => c.kem_one_time = n,
                        KIND_KEM_LAST_RESORT => c.has_last_resort = n > 0,
                        _ => return Err(StorageError::Corrupt("prekey kind")),
                    }
                }
                Ok(c)
            }

            async fn take_bundle(&self, account: &AccountId, device: DeviceId) -> Result<PreKeyBundle, StorageError> {
                self.take_bundles_with(account, Some(device), true)
                    .await?
                    .pop()
                    .ok_or(StorageError::NoPreKeys)
            }

            async fn take_bundles(&self, account: &AccountId) -> Result<Vec<PreKeyBundle>, StorageError> {
                self.take_bundles_with(account, None, true).await
            }

            async fn take_bundles_with(
                &self,
                account: &AccountId,
                device: Option<DeviceId>,
                one_time: bool,
            ) -> Result<Vec<PreKeyBundle>, StorageError> {
                let a = &account.0[..];
                // One write transaction for the whole request, however many devices.
                let mut tx = self.begin().await?;
                let devices: Vec<(i64, Vec<u8>, Vec<u8>)> = match device {
                    Some(d) => {
                        sqlx::query_as(
                            "SELECT device_id, signing_key, identity_key FROM devices \
                             WHERE account_id = $1 AND device_id = $2",
                        )
                        .bind(a)
                        .bind(device_i64(d))
                        .fetch_all(&mut *tx)
                        .await?
                    }
                    None => {
                        sqlx::query_as(
                            "SELECT device_id, signing_key, identity_key FROM devices \
                             WHERE account_id = $1 ORDER BY device_id",
                        )
                        .bind(a)
                        .fetch_all(&mut *tx)
                        .await?
                    }
                };
                if devices.is_empty() {
                    return Err(match device {
                        Some(_) => StorageError::UnknownDevice,
                        None => StorageError::UnknownAccount,
                    });
                }
                let latest = "SELECT record FROM prekeys WHERE account_id = $1 AND device_id = $2 AND kind = $3 \
                              ORDER BY id DESC LIMIT 1";
                let take = concat!(
                    "DELETE FROM prekeys WHERE id = (SELECT id FROM prekeys \
                     WHERE account_id = $1 AND device_id = $2 AND kind = $3 ORDER BY id LIMIT 1",
                    $skip_locked,
                    ") RETURNING record"
                );
                let mut out = Vec::with_capacity(devices.len());
                // Signed and last-resort keys senders would refuse as stale are not served.
                let fresh = FreshHours::now();
                for (id, dsk, ik) in devices {
                    let dev = device_from_i64(id)?;
                    let keys = device_keys_from(&dsk, &ik, &[0; 16])?;
                    let signed: Option<(Vec<u8>,)> = sqlx::query_as(latest)
                        .bind(a)
                        .bind(id)
                        .bind(KIND_SIGNED)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let signed = signed.map(|r| r.0).filter(|r| fresh.serves(r));
                    let mut one_time_key = None;
                    let mut kem = None;
                    if signed.is_some() {
                        if one_time {
                            one_time_key = sqlx::query_as::<_, (Vec<u8>,)>(take)
                                .bind(a)
                                .bind(id)
                                .bind(KIND_ONE_TIME)
                                .fetch_optional(&mut *tx)
                                .await?
                                .map(|r| r.0);
                            kem = sqlx::query_as::<_, (Vec<u8>,)>(take)
                                .bind(a)
                                .bind(id)
                                .bind(KIND_KEM_ONE_TIME)
                                .fetch_optional(&mut *tx)
                                .await?
                                .map(|r| r.0);
                        }
                        if kem.is_none() {
                            kem = sqlx::query_as::<_, (Vec<u8>,)>(latest)
                                .bind(a)
                                .bind(id)
                                .bind(KIND_KEM_LAST_RESORT)
                                .fetch_optional(&mut *tx)
                                .await?
                                .map(|r| r.0)
                                .filter(|r| fresh.serves(r));
                        }
                    }
                    match bundle_from(account, dev, keys, signed, one_time_key, kem) {
                        Ok(b) => out.push(b),
                        Err(StorageError::NoPreKeys) if device.is_none() => {}
                        Err(e) => return Err(e),
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn write_batch(&self, ops: &[WriteOp<'_>]) -> Result<Vec<WriteOutcome>, StorageError> {
                let mut tx = self.begin().await?;
                // 1. Every device row of every account touched, locked in key order, with
                //    the accounts' access settings (read in the same query).
                let mut rows = Rows::new();
                let mut access = std::collections::BTreeMap::new();
                let fresh = FreshHours::now();
                for chunk in batch_accounts(ops).chunks(BATCH_ACCOUNTS_PER_QUERY) {
                    for (a, d, next_seq, depth, acked_seq, reachable, bytes, requests, request_bytes, verifier, accept) in
                        Self::lock_rows(&mut *tx, chunk, fresh).await?
                    {
                        let account = AccountId(key32(&a, "account id")?);
                        if !access.contains_key(&account) {
                            let verifier = verifier.map(|v| key32(&v, "access verifier")).transpose()?;
                            access.insert(
                                account,
                                AccountAccess {
                                    verifier,
                                    accept_requests: accept != 0,
                                },
                            );
                        }
                        rows.insert(
                            (account, device_from_i64(d)?),
                            MailboxRow {
                                next_seq: to_u64(next_seq),
                                depth: to_u64(depth),
                                acked_seq: to_u64(acked_seq),
                                reachable: reachable != 0,
                                bytes: to_u64(bytes),
                                requests: to_u64(requests),
                                request_bytes: to_u64(request_bytes),
                                dirty: false,
                            },
                        );
                    }
                }
                let mut outcomes: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();
                // 2. Acks: one range delete per device.
                let ranges = ack_ranges(ops, &rows);
                let mut deleted = std::collections::BTreeMap::new();
                let mut bodies = std::collections::BTreeSet::new();
                for chunk in ranges.chunks(BATCH_ACKS_PER_QUERY) {
                    for (a, d, len, request, body) in Self::delete_acked(&mut *tx, chunk).await? {
                        let e: &mut Freed = deleted
                            .entry((AccountId(key32(&a, "account id")?), device_from_i64(d)?))
                            .or_default();
                        e.add(len, request);
                        bodies.extend(body);
                    }
                }
                // The bodies whose last envelope an ack deleted (none for 1:1 sends).
                Self::release_all(&mut *tx, bodies.into_iter().collect()).await?;
                apply_acks(ops, &ranges, &deleted, &mut rows, &mut outcomes);
                // 3. Sends, in order; each stored send's body once.
                let Plan {
                    inserts,
                    bodies,
                    lookups,
                } = plan_sends(ops, &mut rows, &access, &mut outcomes);
                for (i, accounts) in lookups {
                    let mut lists = Vec::with_capacity(accounts.len());
                    for a in accounts {
                        let list: Option<(Vec<u8>,)> =
                            sqlx::query_as("SELECT device_list FROM accounts WHERE account_id = $1")
                                .bind(&a.0[..])
                                .fetch_optional(&mut *tx)
                                .await?;
                        lists.push(list.map(|l| l.0));
                    }
                    outcomes[i] = Some(mismatch_outcome(lists));
                }
                let mut body_ids = Vec::with_capacity(bodies.len());
                for b in &bodies {
                    let (id,): (i64,) =
                        sqlx::query_as("INSERT INTO bodies (expires_at, body) VALUES ($1, $2) RETURNING id")
                            .bind(to_i64(b.expires_at_s))
                            .bind(b.bytes)
                            .fetch_one(&mut *tx)
                            .await?;
                    body_ids.push(id);
                }
                for chunk in inserts.chunks(BATCH_ROWS_PER_QUERY) {
                    Self::insert_envelopes(&mut *tx, chunk, &body_ids).await?;
                }
                // 4. The counters of every row that changed.
                let dirty: Vec<_> = rows.iter().filter(|(_, r)| r.dirty).collect();
                for chunk in dirty.chunks(BATCH_ROWS_PER_QUERY) {
                    Self::write_counters(&mut *tx, chunk).await?;
                }
                tx.commit().await?;
                outcomes
                    .into_iter()
                    .map(|o| o.ok_or(StorageError::BatchFailed))
                    .collect()
            }

            async fn fetch(
                &self,
                account: &AccountId,
                device: DeviceId,
                after: u64,
                now_s: u64,
                limit: u32,
            ) -> Result<Vec<StoredEnvelope>, StorageError> {
                // head ‖ body: the body joined by id (none for rows without one).
                let rows: Vec<(i64, i64, Vec<u8>, i64, Option<Vec<u8>>)> = sqlx::query_as(
                    "SELECT e.seq, e.received_at, e.ciphertext, e.body_len, b.body FROM envelopes e \
                     LEFT JOIN bodies b ON b.id = e.body_id \
                     WHERE e.account_id = $1 AND e.device_id = $2 AND e.seq > $3 AND e.expires_at > $4 \
                     ORDER BY e.seq LIMIT $5",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .bind(to_i64(after))
                .bind(to_i64(now_s))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(seq, at, head, body_len, body)| {
                        Ok(StoredEnvelope {
                            seq: to_u64(seq),
                            received_at_s: to_u64(at),
                            envelope: join_envelope(head, body_len, body)?,
                        })
                    })
                    .collect()
            }

            async fn last_seq(&self, account: &AccountId, device: DeviceId) -> Result<u64, StorageError> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT next_seq - 1 FROM devices WHERE account_id = $1 AND device_id = $2")
                        .bind(&account.0[..])
                        .bind(device_i64(device))
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|r| to_u64(r.0)).ok_or(StorageError::UnknownDevice)
            }

            async fn mailbox_totals(&self) -> Result<(u64, u64), StorageError> {
                let (total, max): (Option<i64>, Option<i64>) =
                    sqlx::query_as("SELECT CAST(sum(depth) AS BIGINT), max(depth) FROM devices")
                        .fetch_one(&self.pool)
                        .await?;
                Ok((to_u64(total.unwrap_or(0)), to_u64(max.unwrap_or(0))))
            }

            async fn relay_stats(&self) -> Result<$crate::storage::RelayStats, StorageError> {
                let row: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM devices), \
                     (SELECT CAST(coalesce(sum(depth), 0) AS BIGINT) FROM devices), \
                     (SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM devices), \
                     (SELECT CAST(coalesce(max(depth), 0) AS BIGINT) FROM devices), \
                     (SELECT count(*) FROM push_registrations), (SELECT count(*) FROM blobs), \
                     (SELECT CAST(coalesce(sum(received), 0) AS BIGINT) FROM blobs)",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::storage::RelayStats {
                    accounts: to_u64(row.0),
                    devices: to_u64(row.1),
                    envelopes: to_u64(row.2),
                    envelope_bytes: to_u64(row.3),
                    deepest_mailbox: to_u64(row.4),
                    push_registrations: to_u64(row.5),
                    blobs: to_u64(row.6),
                    blob_bytes: to_u64(row.7),
                })
            }

            async fn mailbox_stats(
                &self,
                account: &AccountId,
                device: DeviceId,
            ) -> Result<$crate::storage::MailboxStats, StorageError> {
                let row: Option<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT depth, bytes, next_seq - 1 FROM devices WHERE account_id = $1 AND device_id = $2",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .fetch_optional(&self.pool)
                .await?;
                let (depth, bytes, last_seq) = row.ok_or(StorageError::UnknownDevice)?;
                Ok($crate::storage::MailboxStats {
                    depth: to_u64(depth),
                    bytes: to_u64(bytes),
                    last_seq: to_u64(last_seq),
                })
            }

            async fn expire(&self, now_s: u64) -> Result<u64, StorageError> {
                let mut tx = self.begin().await?;
                // Lock the affected device rows first, in key order, as a write batch does.
                let _: Vec<(i64,)> = sqlx::query_as(concat!(
                    "SELECT device_id FROM devices WHERE EXISTS (SELECT 1 FROM envelopes e \
                     WHERE e.account_id = devices.account_id AND e.device_id = devices.device_id \
                     AND e.expires_at <= $1) ORDER BY account_id, device_id",
                    $for_update
                ))
                .bind(to_i64(now_s))
                .fetch_all(&mut *tx)
                .await?;
                let gone: Vec<DeletedRow> = sqlx::query_as(
                    "DELETE FROM envelopes WHERE expires_at <= $1 \
                     RETURNING account_id, device_id, CAST(length(ciphertext) + body_len AS BIGINT), \
                     CAST(request AS BIGINT), body_id",
                )
                .bind(to_i64(now_s))
                .fetch_all(&mut *tx)
                .await?;
                let total = gone.len() as u64;
                let mut per_device: std::collections::BTreeMap<(Vec<u8>, i64), Freed> = Default::default();
                let mut bodies = std::collections::BTreeSet::new();
                for (a, d, len, request, body) in gone {
                    per_device.entry((a, d)).or_default().add(len, request);
                    bodies.extend(body);
                }
                // A body expires with the envelopes of its send (the same expires_at).
                // Every expired body is looked at, not only those of the rows just
                // deleted, so one that lost its rows some other way goes too.
                let expired: Vec<(i64,)> = sqlx::query_as("SELECT id FROM bodies WHERE expires_at <= $1")
                    .bind(to_i64(now_s))
                    .fetch_all(&mut *tx)
                    .await?;
                bodies.extend(expired.into_iter().map(|r| r.0));
                Self::release_all(&mut *tx, bodies.into_iter().collect()).await?;
                for ((a, d), f) in per_device {
                    sqlx::query(
                        "UPDATE devices SET depth = depth - $3, bytes = bytes - $4, \
                         requests = requests - $5, request_bytes = request_bytes - $6 \
                         WHERE account_id = $1 AND device_id = $2",
                    )
                    .bind(a)
                    .bind(d)
                    .bind(to_i64(f.envelopes))
                    .bind(to_i64(f.bytes))
                    .bind(to_i64(f.requests))
                    .bind(to_i64(f.request_bytes))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(total)
            }

            async fn put_push(
                &self,
                account: &AccountId,
                device: DeviceId,
                registration: &PushRegistration,
            ) -> Result<(), StorageError> {
                let mut tx = self.begin().await?;
                let exists: Option<(i64,)> = sqlx::query_as(concat!(
                    "SELECT device_id FROM devices WHERE account_id = $1 AND device_id = $2",
                    $for_share
                ))
                .bind(&account.0[..])
                .bind(device_i64(device))
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StorageError::UnknownDevice);
                }
                sqlx::query(
                    "INSERT INTO push_registrations (account_id, device_id, provider, token) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account_id, device_id) DO UPDATE SET provider = excluded.provider, token = excluded.token",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .bind(i64::from(registration.provider.to_byte()))
                .bind(&registration.token[..])
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn push_registration(
                &self,
                account: &AccountId,
                device: DeviceId,
            ) -> Result<Option<PushRegistration>, StorageError> {
                let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT provider, token FROM push_registrations WHERE account_id = $1 AND device_id = $2",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(p, token)| {
                    let p = u8::try_from(p).map_err(|_| StorageError::Corrupt("push provider"))?;
                    Ok(PushRegistration {
                        provider: PushProvider::from_byte(p).map_err(|_| StorageError::Corrupt("push provider"))?,
                        token,
                    })
                })
                .transpose()
            }

            async fn delete_push(&self, account: &AccountId, device: DeviceId) -> Result<bool, StorageError> {
                let done = sqlx::query("DELETE FROM push_registrations WHERE account_id = $1 AND device_id = $2")
                    .bind(&account.0[..])
                    .bind(device_i64(device))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn put_profile(&self, account: &AccountId, profile: &StoredProfile) -> Result<(), StorageError> {
                let mut tx = self.begin().await?;
                let exists: Option<(Vec<u8>,)> = sqlx::query_as(concat!(
                    "SELECT account_id FROM accounts WHERE account_id = $1",
                    $for_share
                ))
                .bind(&account.0[..])
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StorageError::UnknownAccount);
                }
                sqlx::query(
                    "INSERT INTO profiles (account_id, version, ciphertext, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, \
                     ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                )
                .bind(&account.0[..])
                .bind(&profile.version[..])
                .bind(&profile.ciphertext[..])
                .bind(to_i64(profile.updated_at_s))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn profile(&self, account: &AccountId) -> Result<Option<StoredProfile>, StorageError> {
                let row: Option<(Vec<u8>, Vec<u8>, i64)> =
                    sqlx::query_as("SELECT version, ciphertext, updated_at FROM profiles WHERE account_id = $1")
                        .bind(&account.0[..])
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|(version, ciphertext, updated_at)| {
                    Ok(StoredProfile {
                        version: key32(&version, "profile version")?,
                        ciphertext,
                        updated_at_s: to_u64(updated_at),
                    })
                })
                .transpose()
            }

            async fn delete_profile(&self, account: &AccountId) -> Result<bool, StorageError> {
                let done = sqlx::query("DELETE FROM profiles WHERE account_id = $1")
                    .bind(&account.0[..])
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

pub(crate) use storage_impl;
