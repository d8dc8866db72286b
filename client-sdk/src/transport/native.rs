//! The native transport backend: TCP (TCP_NODELAY), TLS 1.3 with rustls, HTTP/1.1 with
//! hyper, WebSockets with tokio-tungstenite.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{MAX_FRAME, Method, TransportError};

fn io(e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(e.to_string())
}

/// Where and how to reach the relay.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    authority: String,
    tls: Option<Tls>,
}

/// TLS 1.3 to an `https://` relay: the Mozilla root set (webpki-roots) plus any extra
/// roots the app configured, e.g. a self-hosted relay's private CA.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

fn tls_connector(extra_roots_pem: &[Vec<u8>]) -> Result<TlsConnector, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots_pem {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|_| TransportError::BadRootCertificate)?;
            roots.add(cert).map_err(|_| TransportError::BadRootCertificate)?;
            any = true;
        }
        if !any {
            return Err(TransportError::BadRootCertificate);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| TransportError::BadRootCertificate)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: a resumed session (a ticket or session id from an earlier
    // connection) would let the relay link an anonymous connection (a sealed send, a
    // profile fetch) to the authenticated one the ticket came from. Every connection
    // makes a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connection to the relay, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Endpoint {
    /// `host` (an IPv6 address in brackets) and `port` of a URL already checked by the
    /// caller.
    pub(super) fn new(host: &str, port: &str, tls: bool, extra_roots_pem: &[Vec<u8>]) -> Result<Self, TransportError> {
        let host_name = host.trim_start_matches('[').trim_end_matches(']');
        let tls = if tls {
            let name = ServerName::try_from(host_name.to_owned()).map_err(|_| TransportError::BadUrl)?;
            Some(Tls {
                connector: tls_connector(extra_roots_pem)?,
                name,
            })
        } else {
            None
        };
        Ok(Self {
            authority: format!("{host}:{port}"),
            tls,
        })
    }

    /// Opens a TCP connection (TCP_NODELAY) and, for `https://`, the TLS session.
    async fn open_stream(&self) -> Result<Stream, TransportError> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), tcp).await.map_err(io)?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }

    /// One HTTP exchange on a fresh connection: the status and at most
    /// `extra.max_response` bytes of body.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
        extra: &super::Extra,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let stream = self.open_stream().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io)?;
        let conn = tokio::spawn(conn);
        let method = match method {
            Method::Get => hyper::Method::GET,
            Method::Put => hyper::Method::PUT,
            Method::Delete => hyper::Method::DELETE,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", "application/octet-stream");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some((first, last)) = extra.range {
            req = req.header("range", format!("bytes={first}-{last}"));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(io)?;
        let resp = sender.send_request(req).await.map_err(io)?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), extra.max_response)
            .collect()
            .await
            .map_err(io)?
            .to_bytes()
            .to_vec();
        conn.abort();
        Ok((status, bytes))
    }

    /// Opens the WebSocket `/v1/ws`.
    pub(super) async fn open_ws(&self) -> Result<Ws, TransportError> {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/v1/ws", self.authority);
        let stream = self.open_stream().await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(io)?;
        Ok(Ws(ws))
    }
}

/// An open WebSocket.
pub(super) struct Ws(WebSocketStream<Stream>);

impl Ws {
    /// Pings and pongs count as traffic for the idle check.
    pub(super) const SEES_PINGS: bool = true;

    pub(super) async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportError> {
        self.0.send(Message::Binary(bytes.into())).await.map_err(io)
    }

    /// A WebSocket ping (the client side of the heartbeat).
    pub(super) async fn ping(&mut self) -> Result<(), TransportError> {
        self.0.send(Message::Ping(Bytes::new())).await.map_err(io)
    }

    /// The next message: `Some(Some(bytes))` for a binary message, `Some(None)` for a
    /// control or text message (pings are answered by the library), `None` when the
    /// socket closed.
    pub(super) async fn next(&mut self) -> Result<Option<Option<Vec<u8>>>, TransportError> {
        match self.0.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(io(e)),
            Some(Ok(Message::Binary(b))) => Ok(Some(Some(b.to_vec()))),
            Some(Ok(Message::Close(_))) => Ok(None),
            Some(Ok(_)) => Ok(Some(None)),
        }
    }

    pub(super) async fn close(&mut self) {
        let _ = self.0.close(None).await;
    }
}
