//! Optional built-in TLS: TLS 1.3 only (rustls with the *ring* provider), a certificate
//! chain and private key from PEM files, and HSTS on every HTTPS response.
//!
//! The pair is read again on SIGHUP ([`Certificates::reload`], `systemctl reload`): new
//! handshakes get the new pair, connections already open keep theirs, and a pair that
//! does not load leaves the old one in place.
//!
//! Handshakes run on their own tasks, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client cannot hold up accepting others;
//! finished connections are handed to the HTTP server through a bounded channel.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Tls;

/// The most TLS handshakes in progress at once; further connections are closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// A handshake that takes longer is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no certificate")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{0}: no private key")]
    NoKey(PathBuf),
    /// rustls refused the pair (for example, the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads the configured chain and key and checks that they belong together.
fn load_pair(tls: &Tls, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert_path)?)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(tls.cert_path.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(&tls.key_path)?).map_err(|_| TlsError::NoKey(tls.key_path.clone()))?;
    let pair = CertifiedKey::from_der(certs, key, provider)?;
    // `from_der` lets a pair whose match it cannot tell through; refuse it instead.
    pair.keys_match()?;
    Ok(pair)
}

/// The certificate chain and key the relay presents, read from the configured files at
/// start and again by [`Certificates::reload`].
pub struct Certificates {
    tls: Tls,
    provider: Arc<CryptoProvider>,
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.tls.cert_path)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads the configured pair.
    pub fn load(tls: &Tls) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(tls, &provider)?;
        Ok(Arc::new(Self {
            tls: tls.clone(),
            provider,
            current: std::sync::RwLock::new(Arc::new(pair)),
        }))
    }

    /// Reads the files again. On success new handshakes present the new pair; on an
    /// error the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = Arc::new(load_pair(&self.tls, &self.provider)?);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
        Ok(())
    }

    /// The end-entity certificate presented now (DER).
    pub fn presented(&self) -> CertificateDer<'static> {
        let pair = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        pair.cert
            .first()
            .cloned()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A TLS 1.3-only acceptor presenting `certs` (as they are at each handshake), offering
/// `http/1.1` by ALPN.
pub fn acceptor(certs: Arc<Certificates>) -> Result<TlsAcceptor, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(certs.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener that yields connections whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` (with TCP_NODELAY) and handshakes with `acceptor`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(Self { ready, local, task })
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) if is_connection_error(&e) => continue,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning, as
                // axum's own TCP listener does.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                let _ = ready.send((tls, addr)).await;
            }
            drop(permit);
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task never ends on its own while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
