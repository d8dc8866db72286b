//! HTTP endpoints. Bodies are `sotto-proto` bodies (`application/octet-stream`); every
//! error is an [`AppError`] with a stable code.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sotto_crypto::{AccountId, DeviceId, SignedDeviceList};
use sotto_proto::{
    Body as WireBody, Bundles, DecodeError, DeviceListBody, ErrorCode, PreKeyUpload, ProfileBody, ProfileUpload,
    PushRegistration, parse_authorization,
};

use crate::error::AppError;
use crate::metrics::inc;
use crate::state::AppState;
use crate::storage::{PutDeviceList, Storage, StoredProfile, verify_prekeys};

type Shared = Arc<AppState>;

/// A decoded request body; a body above the size limit is `BODY_TOO_LARGE`, one that does
/// not decode `MALFORMED` (or `UNSUPPORTED_VERSION`).
pub(crate) struct Wire<T>(pub(crate) T);

impl<T: WireBody, S: Send + Sync> FromRequest<S> for Wire<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError(ErrorCode::BODY_TOO_LARGE)
            } else {
                AppError(ErrorCode::MALFORMED)
            }
        })?;
        T::decode(&bytes).map(Wire).map_err(|e| AppError(decode_code(&e)))
    }
}

/// The code for a decode failure.
pub(crate) fn decode_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
        _ => ErrorCode::MALFORMED,
    }
}

fn wire<T: WireBody>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body.encode(),
    )
        .into_response()
}

/// A request authenticated by the `Authorization: Sotto-v1 …` header, with its decoded
/// body: an answer to a challenge from `GET /v1/auth/challenge`, which it consumes,
/// signed over the request's method, path and body hash
/// ([`sotto_proto::http_auth_binding`]), so a header answered for one request fails on
/// any other.
pub(crate) struct Authed<T> {
    pub(crate) account: AccountId,
    pub(crate) device: DeviceId,
    pub(crate) body: T,
}

/// What an authenticated request carries: [`NoBody`] or a decoded wire body.
pub(crate) trait AuthedBody: Sized {
    fn from_bytes(bytes: &[u8]) -> Result<Self, AppError>;
}

/// A request without a body (one sent anyway is still bound by the signature).
pub(crate) struct NoBody;

impl AuthedBody for NoBody {
    fn from_bytes(_: &[u8]) -> Result<Self, AppError> {
        Ok(NoBody)
    }
}

impl<T: WireBody> AuthedBody for Wire<T> {
    fn from_bytes(bytes: &[u8]) -> Result<Self, AppError> {
        T::decode(bytes).map(Wire).map_err(|e| AppError(decode_code(&e)))
    }
}

impl<T: AuthedBody> FromRequest<Shared> for Authed<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, Self::Rejection> {
        let resp = {
            let value = req
                .headers()
                .get(header::AUTHORIZATION)
                .ok_or(AppError(ErrorCode::AUTH_REQUIRED))?
                .to_str()
                .map_err(|_| AppError(ErrorCode::AUTH_REQUIRED))?;
            parse_authorization(value).map_err(|_| AppError(ErrorCode::AUTH_REQUIRED))?
        };
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError(ErrorCode::BODY_TOO_LARGE)
            } else {
                AppError(ErrorCode::MALFORMED)
            }
        })?;
        let binding = sotto_proto::http_auth_binding(&resp.nonce, &method, &path, &bytes);
        if let Err(code) = state.verify_http_auth(&resp, &binding).await {
            inc(&state.metrics.auth_failures_total, 1);
            return Err(AppError(code));
        }
        Ok(Self {
            account: resp.account_id,
            device: resp.device_id,
            body: T::from_bytes(&bytes)?,
        })
    }
}

fn account_from_path(s: &str) -> Result<AccountId, AppError> {
    AccountId::from_str(s).map_err(|_| AppError(ErrorCode::MALFORMED))
}

/// A profile version in a path: exactly 64 lowercase hex digits, else `MALFORMED`.
fn profile_version_from_path(s: &str) -> Result<[u8; 32], AppError> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let malformed = AppError(ErrorCode::MALFORMED);
    if s.len() != 64 {
        return Err(malformed);
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let (hi, lo) = (nibble(pair[0]).ok_or(malformed)?, nibble(pair[1]).ok_or(malformed)?);
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

/// The address key of the client that sent a request (unspecified when the connection
/// carries none, as in tests that drive the router directly).
fn client_addr(conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>) -> std::net::IpAddr {
    conn.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.key)
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the database answers, the relay is not shutting down and, in cluster
/// mode, the bus is connected (otherwise 503 `bus unavailable`).
pub(crate) async fn readyz(State(state): State<Shared>) -> Result<Response, AppError> {
    if state.is_shutting_down() {
        return Err(AppError(ErrorCode::SHUTTING_DOWN));
    }
    state.store.ping().await?;
    if state.cluster.as_ref().is_some_and(|c| !c.ready()) {
        // Degraded: this node's clients still get everything (it reads their mailboxes
        // every poll interval), but new clients are better served by a node on the bus.
        return Ok((StatusCode::SERVICE_UNAVAILABLE, "bus unavailable\n").into_response());
    }
    Ok("ready\n".into_response())
}

/// `GET /metrics` on the public listener: only with `metrics_token` configured and
/// `Authorization: Bearer <token>` (compared in constant time); otherwise `NOT_FOUND`
/// (no token configured) or `AUTH_REQUIRED`.
pub(crate) async fn metrics(State(state): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let Some(token) = &state.config.metrics_token else {
        return AppError(ErrorCode::NOT_FOUND).into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    // Compared as hashes, so neither the length nor the content leaks through timing.
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(token.0.as_bytes()));
    if !bool::from(a.as_slice().ct_eq(b.as_slice())) {
        return AppError(ErrorCode::AUTH_REQUIRED).into_response();
    }
    render_metrics(&state)
}

/// The Prometheus text: counters and gauges kept as they change; nothing is queried.
fn render_metrics(state: &AppState) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &state.metrics;
    m.write_queue_length
        .store(i64::try_from(state.writer.queued()).unwrap_or(i64::MAX), Relaxed);
    m.writer_saturated.store(i64::from(state.writer_saturated()), Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// The router of the `metrics_listen` address: `GET /metrics`, without a token.
pub(crate) fn metrics_router(state: Shared) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<Shared>| async move { render_metrics(&state) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, crate::error::error_bodies))
}

/// `GET /v1/auth/challenge`: a stateless challenge, rate limited per address and in
/// total (`RATE_LIMITED`).
pub(crate) async fn challenge(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
) -> Result<Response, AppError> {
    let c = state.issue_http_challenge(client_addr(conn))?;
    Ok(wire(StatusCode::OK, &c))
}

/// `PUT /v1/accounts/{account}/device-list`: registers the account or updates its list.
/// The list must verify against the account id in the path; versions only grow.
pub(crate) async fn put_device_list(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Path(account): Path<String>,
    Wire(body): Wire<DeviceListBody>,
) -> Result<StatusCode, AppError> {
    let account = account_from_path(&account)?;
    let signed = SignedDeviceList::from_bytes(&body.signed_list).map_err(|_| AppError(ErrorCode::BAD_DEVICE_LIST))?;
    let list = signed.verify(&account).map_err(|e| match e {
        sotto_crypto::DeviceListError::WrongAccount => AppError(ErrorCode::ACCOUNT_MISMATCH),
        _ => AppError(ErrorCode::BAD_DEVICE_LIST),
    })?;
    if list.version() > i64::MAX as u64 {
        // Unstorable (versions are signed 64-bit in the database), and in any case far
        // beyond MAX_VERSION_STEP of any version a registration can reach.
        return Err(AppError(ErrorCode::VERSION_JUMP));
    }
    let before = state.store.device_list(&account).await?;
    if before.is_none() {
        // A registration: free, so rate limited per address and in total.
        state.charge_registration(client_addr(conn))?;
    } else {
        // An update: signed, but limited per account (docs/protocol.md §4.3, §13.3).
        state.charge_list_update(&account)?;
    }
    match state.store.put_device_list(&list).await? {
        PutDeviceList::Created => Ok(StatusCode::CREATED),
        PutDeviceList::Updated => {
            // Connections of devices that left the list, or were re-keyed, are closed.
            let old = before
                .and_then(|b| SignedDeviceList::from_bytes(&b).ok())
                .and_then(|s| s.verify(&account).ok());
            if let Some(change) = old.and_then(|old| old.check_update(&list).ok()) {
                for device in change.removed.iter().chain(&change.rekeyed) {
                    state.hub.evict(&account, *device);
                }
            }
            Ok(StatusCode::OK)
        }
    }
}

/// `GET /v1/accounts/{account}/device-list`.
pub(crate) async fn get_device_list(
    State(state): State<Shared>,
    Path(account): Path<String>,
) -> Result<Response, AppError> {
    let account = account_from_path(&account)?;
    let list = state
        .store
        .device_list(&account)
        .await?
        .ok_or(AppError(ErrorCode::UNKNOWN_ACCOUNT))?;
    Ok(wire(StatusCode::OK, &DeviceListBody { signed_list: list }))
}

/// `PUT /v1/prekeys` (authenticated): upload or replenish the device's prekeys.
pub(crate) async fn put_prekeys(
    State(state): State<Shared>,
    auth: Authed<Wire<PreKeyUpload>>,
) -> Result<StatusCode, AppError> {
    let Wire(upload) = &auth.body;
    let keys = state
        .store
        .device_keys(&auth.account, auth.device)
        .await?
        .ok_or(AppError(ErrorCode::UNKNOWN_DEVICE))?;
    verify_prekeys(auth.device, &keys.signing_key, upload).map_err(|_| AppError(ErrorCode::BAD_PREKEY))?;
    state
        .store
        .put_prekeys(
            &auth.account,
            auth.device,
            &keys.signing_key,
            upload,
            state.config.limits.max_one_time_prekeys,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/prekeys/count` (authenticated).
pub(crate) async fn prekey_count(State(state): State<Shared>, auth: Authed<NoBody>) -> Result<Response, AppError> {
    let counts = state.store.prekey_counts(&auth.account, auth.device).await?;
    Ok(wire(StatusCode::OK, &counts))
}

/// `GET /v1/accounts/{account}/bundles` (authenticated): a bundle for every device, in
/// one write transaction, within the requester's and the target's rates.
pub(crate) async fn bundles(
    State(state): State<Shared>,
    Path(account): Path<String>,
    auth: Authed<NoBody>,
) -> Result<Response, AppError> {
    let account = account_from_path(&account)?;
    let one_time = state.charge_bundle(&auth.account, &account)?;
    let bundles = state.store.take_bundles_with(&account, None, one_time).await?;
    Ok(wire(StatusCode::OK, &Bundles { bundles }))
}

/// `GET /v1/accounts/{account}/bundles/{device}` (authenticated).
pub(crate) async fn bundle(
    State(state): State<Shared>,
    Path((account, device)): Path<(String, String)>,
    auth: Authed<NoBody>,
) -> Result<Response, AppError> {
    let account = account_from_path(&account)?;
    let device = device.parse::<u32>().map_err(|_| AppError(ErrorCode::MALFORMED))?;
    let one_time = state.charge_bundle(&auth.account, &account)?;
    let bundles = state
        .store
        .take_bundles_with(&account, Some(DeviceId(device)), one_time)
        .await?;
    Ok(wire(StatusCode::OK, &Bundles { bundles }))
}

/// `PUT /v1/push` (authenticated): store the device's push registration, after checking
/// its token's form (`MALFORMED`; [`crate::push::check_registration`]).
pub(crate) async fn put_push(
    State(state): State<Shared>,
    auth: Authed<Wire<PushRegistration>>,
) -> Result<StatusCode, AppError> {
    let Wire(reg) = &auth.body;
    crate::push::check_registration(reg).map_err(|_| AppError(ErrorCode::MALFORMED))?;
    state.store.put_push(&auth.account, auth.device, reg).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/access` (authenticated): set the account's access verifier and whether it
/// takes message requests (docs/protocol.md §13.8). Any listed device of the account may.
pub(crate) async fn put_access(
    State(state): State<Shared>,
    auth: Authed<Wire<sotto_proto::AccessPolicy>>,
) -> Result<StatusCode, AppError> {
    let Wire(policy) = &auth.body;
    let access = crate::storage::AccountAccess {
        verifier: Some(policy.verifier),
        accept_requests: policy.accept_requests,
    };
    state.store.put_access(&auth.account, access).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/push` (authenticated).
pub(crate) async fn delete_push(State(state): State<Shared>, auth: Authed<NoBody>) -> Result<StatusCode, AppError> {
    state.store.delete_push(&auth.account, auth.device).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/profile` (authenticated): store the account's encrypted profile and its
/// version, replacing the ones before, so the old version finds nothing any more. Any
/// listed device of the account may; uploads are rate limited per account
/// (`RATE_LIMITED`).
pub(crate) async fn put_profile(
    State(state): State<Shared>,
    auth: Authed<Wire<ProfileUpload>>,
) -> Result<StatusCode, AppError> {
    state.charge_profile_update(&auth.account)?;
    let Wire(upload) = auth.body;
    let now = crate::state::now_s();
    let profile = StoredProfile {
        version: upload.version,
        ciphertext: upload.ciphertext,
        updated_at_s: now - now % 60,
    };
    state.store.put_profile(&auth.account, &profile).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/profile` (authenticated): `204` whether or not there was one.
pub(crate) async fn delete_profile(State(state): State<Shared>, auth: Authed<NoBody>) -> Result<StatusCode, AppError> {
    state.store.delete_profile(&auth.account).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/accounts/{account}/profile/{version}` (unauthenticated): the account's
/// encrypted profile when `{version}` is the stored version (compared in constant time).
/// No profile, an unknown account and another version are all the same `NOT_FOUND`, so a
/// client without the version learns nothing. Rate limited per address and in total
/// (`RATE_LIMITED`) before the database is read.
pub(crate) async fn get_profile(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Path((account, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    use subtle::ConstantTimeEq;
    let account = account_from_path(&account)?;
    let version = profile_version_from_path(&version)?;
    state.charge_profile_fetch(client_addr(conn))?;
    inc(&state.metrics.profile_fetches_total, 1);
    match state.store.profile(&account).await? {
        Some(p) if bool::from(p.version.ct_eq(&version)) => Ok(wire(
            StatusCode::OK,
            &ProfileBody {
                ciphertext: p.ciphertext,
            },
        )),
        _ => Err(AppError(ErrorCode::NOT_FOUND)),
    }
}

/// `GET /v1/blobs/issuer` (unauthenticated): the current token issuer and the limits.
pub(crate) async fn blob_issuer(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
) -> Result<Response, AppError> {
    state.blobs.charge(client_addr(conn), &state.metrics)?;
    let issuer = state.blobs.issuer(&state.store).await?;
    Ok(wire(StatusCode::OK, &issuer))
}

/// `PUT /v1/blobs/tokens` (authenticated): upload tokens against the device's daily
/// quota (`QUOTA_EXCEEDED`); the epoch must be the current one (`TOKEN_INVALID`).
pub(crate) async fn blob_tokens(
    State(state): State<Shared>,
    auth: Authed<Wire<sotto_proto::TokenIssue>>,
) -> Result<Response, AppError> {
    let Wire(req) = &auth.body;
    let issued = state
        .blobs
        .issue_tokens(&state.store, &state.metrics, &auth.account, auth.device, req)
        .await?;
    Ok(wire(StatusCode::OK, &issued))
}

/// `PUT /v1/blobs` (unauthenticated, paid with a token): creates a blob; `201` with its id.
pub(crate) async fn blob_create(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Wire(req): Wire<sotto_proto::BlobCreate>,
) -> Result<Response, AppError> {
    state.blobs.charge(client_addr(conn), &state.metrics)?;
    let created = state.blobs.create(&state.store, &state.metrics, &req).await?;
    Ok(wire(StatusCode::CREATED, &created))
}

/// `PUT /v1/blobs/{id}/{offset}` (unauthenticated): one piece, the raw bytes, streamed
/// to storage (at most `MAX_BLOB_PIECE`, whatever `max_body_bytes` says).
pub(crate) async fn blob_piece(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Path((id, offset)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<Response, AppError> {
    let addr = client_addr(conn);
    state.blobs.charge(addr, &state.metrics)?;
    let status = state
        .blobs
        .put_piece(&state.store, &state.metrics, addr, &id, &offset, body)
        .await?;
    Ok(wire(StatusCode::OK, &status))
}

/// `GET /v1/blobs/{id}/status` (unauthenticated): the blob's length and bytes received.
pub(crate) async fn blob_status(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    state.blobs.charge(client_addr(conn), &state.metrics)?;
    let status = state.blobs.status(&state.store, &id).await?;
    Ok(wire(StatusCode::OK, &status))
}

/// `GET /v1/blobs/{id}` (unauthenticated): the complete blob, streamed; one `Range`.
pub(crate) async fn blob_download(
    State(state): State<Shared>,
    conn: Option<axum::Extension<Arc<crate::net::ConnInfo>>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, AppError> {
    let addr = client_addr(conn);
    state.blobs.charge(addr, &state.metrics)?;
    state
        .blobs
        .download(&state.store, &state.metrics, addr, &id, headers.get(header::RANGE))
        .await
}

/// Any other path.
pub(crate) async fn not_found() -> AppError {
    AppError(ErrorCode::NOT_FOUND)
}

/// A known path with a method it does not take: status 405, code `NOT_FOUND`.
pub(crate) async fn method_not_allowed() -> Response {
    let mut res = AppError(ErrorCode::NOT_FOUND).into_response();
    *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    res
}
