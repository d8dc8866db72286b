//! The Sotto blind relay: stores and forwards opaque envelopes between devices.
//!
//! [`app`] builds the router and [`run`] serves it on a listener until a shutdown
//! future resolves, then drains the WebSockets; tests bind `127.0.0.1:0` and call both.
//! The accept loop, per-address accounting and timeouts are in `net.rs`.
//!
//! ```text
//! GET  /healthz /readyz
//! GET  /metrics                                   (with metrics_token, or on metrics_listen)
//! GET  /v1/auth/challenge                         → Challenge
//! PUT  /v1/accounts/{account}/device-list         DeviceListBody (register or update)
//! GET  /v1/accounts/{account}/device-list         → DeviceListBody
//! PUT  /v1/prekeys                                 PreKeyUpload           (authenticated)
//! GET  /v1/prekeys/count                           → PreKeyCounts         (authenticated)
//! GET  /v1/accounts/{account}/bundles[/{device}]   → Bundles              (authenticated)
//! PUT  /v1/push, DELETE /v1/push                   PushRegistration       (authenticated)
//! PUT  /v1/access                                  AccessPolicy           (authenticated)
//! PUT  /v1/profile, DELETE /v1/profile             ProfileUpload          (authenticated)
//! GET  /v1/accounts/{account}/profile/{version}    → ProfileBody          (unauthenticated;
//!                                                    NOT_FOUND unless {version} is the stored one)
//! GET  /v1/blobs/issuer                            → BlobIssuer           (unauthenticated)
//! PUT  /v1/blobs/tokens                            TokenIssue → TokenIssued (authenticated)
//! PUT  /v1/blobs                                   BlobCreate → BlobCreated (unauthenticated;
//!                                                    paid with a token)
//! PUT  /v1/blobs/{id}/{offset}                     raw piece → BlobStatus  (unauthenticated)
//! GET  /v1/blobs/{id}/status                       → BlobStatus           (unauthenticated)
//! GET  /v1/blobs/{id}                              → the blob's bytes, Range (unauthenticated)
//! GET  /v1/ws                                      WebSocket (sotto-proto frames)
//! ```
//! `{id}` is a blob id, 64 lowercase hex digits, `{offset}` a decimal byte offset
//! (docs/protocol.md §16.4). The blob routes without authentication are rate limited per
//! address and in total.
//! `{account}` is the 52-character base32 account id, `{version}` 64 lowercase hex
//! digits. Authenticated requests carry
//! `Authorization: Sotto-v1 <hex>`, an answer to a fresh challenge that it consumes.
//! Browsers on the origins in `cors_allowed_origins` may call all of it (CORS; `cors.rs`).

pub mod admin;
pub mod blobs;
pub mod cluster;
pub mod config;
mod cors;
pub mod error;
mod http;
pub mod metrics;
mod net;
pub mod push;
mod socket;
mod state;
pub mod storage;
pub mod tls;
pub mod writer;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use sotto_proto::ErrorCode;
use tokio::net::TcpListener;

pub use net::addr_key;

pub use config::Config;
pub use error::AppError;
pub use state::AppState;

use crate::storage::Storage;

/// The router. With TLS configured, every response carries HSTS. CORS wraps every route,
/// the fallback and the errors.
pub fn app(state: Arc<AppState>) -> Router {
    let cors = cors::Cors::new(&state.config.cors_allowed_origins);
    let body_limit = state.config.limits.max_body_bytes;
    let hsts = state
        .config
        .tls
        .as_ref()
        .filter(|t| t.hsts_max_age_secs > 0)
        .and_then(|t| HeaderValue::from_str(&format!("max-age={}", t.hsts_max_age_secs)).ok());
    let router = Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/v1/auth/challenge", get(http::challenge))
        .route(
            "/v1/accounts/{account}/device-list",
            get(http::get_device_list).put(http::put_device_list),
        )
        .route("/v1/accounts/{account}/bundles", get(http::bundles))
        .route("/v1/accounts/{account}/bundles/{device}", get(http::bundle))
        .route("/v1/prekeys", axum::routing::put(http::put_prekeys))
        .route("/v1/prekeys/count", get(http::prekey_count))
        .route("/v1/push", axum::routing::put(http::put_push).delete(http::delete_push))
        .route("/v1/access", axum::routing::put(http::put_access))
        .route(
            "/v1/profile",
            axum::routing::put(http::put_profile).delete(http::delete_profile),
        )
        .route("/v1/accounts/{account}/profile/{version}", get(http::get_profile))
        .route("/v1/blobs/issuer", get(http::blob_issuer))
        .route("/v1/blobs/tokens", axum::routing::put(http::blob_tokens))
        .route("/v1/blobs", axum::routing::put(http::blob_create))
        .route("/v1/blobs/{id}", get(http::blob_download))
        .route("/v1/blobs/{id}/status", get(http::blob_status))
        .route("/v1/blobs/{id}/{offset}", axum::routing::put(http::blob_piece))
        .route("/v1/ws", get(ws_upgrade))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(cors, cors::cors))
        .layer(axum::middleware::from_fn_with_state(state, error::error_bodies));
    match hsts {
        Some(value) => router.layer(axum::middleware::map_response(move |mut res: Response| {
            let value = value.clone();
            async move {
                res.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, value);
                res
            }
        })),
        None => router,
    }
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    conn: Option<Extension<Arc<net::ConnInfo>>>,
    mut req: Request,
) -> Response {
    let ws = match socket::Upgrade::from_request(&mut req) {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    if state.is_shutting_down() {
        return AppError(ErrorCode::SHUTTING_DOWN).into_response();
    }
    let slot = match conn {
        Some(Extension(conn)) => match conn.open_ws() {
            Some(slot) => Some(slot),
            None => {
                metrics::inc(&state.metrics.connections_refused_total, 1);
                return AppError(ErrorCode::TOO_MANY_CONNECTIONS).into_response();
            }
        },
        None => None,
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        metrics::inc(&state.metrics.connections_refused_total, 1);
        return AppError(ErrorCode::TOO_MANY_CONNECTIONS).into_response();
    };
    let max = state.config.limits.max_frame_bytes;
    ws.accept(max, move |socket| ws::serve_socket(state, socket, slot, permit))
}

/// Serves `app(state)` on `listener` until `shutdown` resolves; then refuses new
/// connections, tells every WebSocket to close (after the frame it is handling, so a
/// send that was answered is stored and nothing is lost) and returns once all have.
/// With `[tls]` configured it serves HTTPS and WSS (TLS 1.3 only); a certificate or key
/// that does not load is an `InvalidInput` error before anything is served. With
/// `metrics_listen` set, `/metrics` is also served (plain HTTP) on that address. Push
/// credentials that do not load are an `InvalidInput` error too.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + std::marker::Send + 'static,
) -> std::io::Result<()> {
    let metrics_listener = match state.config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let invalid = |e: tls::TlsError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
    let tls = match &state.config.tls {
        Some(tls) => {
            let certs = tls::Certificates::load(tls).map_err(invalid)?;
            let _ = state.tls.set(certs.clone());
            Some(tls::acceptor(certs).map_err(invalid)?)
        }
        None => None,
    };
    let providers = push::Providers::load(&state.config.push)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    if let Some(e) = &state.cluster_error {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e.clone()));
    }
    if state.cluster.is_some() && state.store.backend() != "postgres" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cluster mode needs a PostgreSQL database_url: the nodes share it",
        ));
    }
    let signal_state = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        signal_state.begin_shutdown();
    });
    let metrics_task = metrics_listener.map(|l| {
        let router = http::metrics_router(state.clone());
        let conns = net::Conns::new(&state.config.limits);
        let listener = l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(net::accept_loop(
            listener,
            router,
            conns,
            state.metrics.clone(),
            net::Timeouts::of(&state.config.limits),
            state.shutdown_signal(),
        ))
    });
    let result = match tls {
        Some(acceptor) => serve(tls::TlsListener::new(listener, acceptor)?, state, providers).await,
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            serve(listener, state, providers).await
        }
    };
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}

async fn serve<L>(listener: L, state: Arc<AppState>, providers: push::Providers) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    // The mailbox gauges start from the database once; the writer and expiry keep them.
    if let Ok((total, max)) = state.store.mailbox_totals().await {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &state.metrics;
        m.mailbox_envelopes
            .store(i64::try_from(total).unwrap_or(i64::MAX), Relaxed);
        m.mailbox_depth_max
            .store(i64::try_from(max).unwrap_or(i64::MAX), Relaxed);
    }
    let expiry = tokio::spawn(expiry_loop(state.clone()));
    let blob_gc = tokio::spawn(blobs::gc_loop(state.clone()));
    let pushes = tokio::spawn(push::run_worker(
        push::Worker {
            pusher: state.pusher.clone(),
            providers: Arc::new(providers),
            hub: state.hub.clone(),
            store: state.store.clone(),
            metrics: state.metrics.clone(),
            cfg: state.config.push.clone(),
        },
        state.shutdown_signal(),
    ));
    let bus = state.cluster.clone().map(|cluster| {
        tokio::spawn(cluster::run(
            cluster::BusTasks {
                cluster,
                hub: state.hub.clone(),
                pusher: state.pusher.clone(),
                metrics: state.metrics.clone(),
            },
            state.shutdown_signal(),
        ))
    });
    let house_state = state.clone();
    let housekeeping = tokio::spawn(net::every(HOUSEKEEPING, state.shutdown_signal(), move || {
        let ttl_ms = house_state.config.limits.challenge_ttl_secs.saturating_mul(1000);
        house_state.guards.housekeeping(ttl_ms);
        house_state.blobs.housekeeping();
        std::future::ready(())
    }));
    net::accept_loop(
        listener,
        app(state.clone()),
        state.conns.clone(),
        state.metrics.clone(),
        net::Timeouts::of(&state.config.limits),
        state.shutdown_signal(),
    )
    .await;
    state.begin_shutdown();
    state.conns.drained().await;
    let all = u32::try_from(state.config.limits.max_connections).unwrap_or(u32::MAX);
    let _ = state.connections.acquire_many(all).await;
    // Every answered send is already committed; this commits the last queued acks.
    state.writer.close().await;
    if let Some(bus) = bus {
        // It tells the other nodes this node's devices are gone, then ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), bus).await;
    }
    expiry.abort();
    blob_gc.abort();
    pushes.abort();
    housekeeping.abort();
    state.store.close().await;
    tracing::info!("relay stopped");
    Ok(())
}

/// How often idle per-address limiter state and expired used challenges are forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

async fn expiry_loop(state: Arc<AppState>) {
    use std::sync::atomic::Ordering::Relaxed;
    let every = Duration::from_secs(state.config.limits.expiry_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    let mut shutdown = state.shutdown_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::wait_shutdown(&mut shutdown) => return,
        }
        match state.store.expire(state::now_s()).await {
            Ok(n) => {
                metrics::inc(&state.metrics.envelopes_expired_total, n);
                metrics::gauge_add(&state.metrics.mailbox_envelopes, -i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => {
                let _ = error::code_of(&e);
            }
        }
        // Answered challenge nonces older than a challenge lives (cluster mode).
        if state.cluster.is_some() {
            let ttl_ms = state.config.limits.challenge_ttl_secs.saturating_mul(1000);
            if let Err(e) = state
                .store
                .forget_challenges(state::now_ms().saturating_sub(ttl_ms))
                .await
            {
                let _ = error::code_of(&e);
            }
        }
        // Old page images of acked and expired envelopes leave the WAL.
        if let Err(e) = state.store.checkpoint().await {
            let _ = error::code_of(&e);
        }
        // The fullest mailbox (and the exact total) once per run, not per scrape.
        if let Ok((total, max)) = state.store.mailbox_totals().await {
            let m = &state.metrics;
            m.mailbox_envelopes
                .store(i64::try_from(total).unwrap_or(i64::MAX), Relaxed);
            m.mailbox_depth_max
                .store(i64::try_from(max).unwrap_or(i64::MAX), Relaxed);
        }
    }
}
