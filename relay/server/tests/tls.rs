//! Built-in TLS: HTTPS and WSS with TLS 1.3 only, HSTS on every response, and a clear
//! error for a certificate that does not load. The certificate is a test-only fixture
//! (tests/fixtures/tls).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::relay::{FAILSAFE, Relay, answer};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use sotto_proto::{Body, DeviceListBody, Frame};
use sotto_relay::config::Tls;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn tls_config(hsts: u64) -> Tls {
    Tls {
        cert_path: fixture("cert.pem"),
        key_path: fixture("key.pem"),
        hsts_max_age_secs: hsts,
    }
}

fn client(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(FAILSAFE, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake within the failsafe")
}

async fn https(addr: SocketAddr, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let tls = connect(addr, client(&[&rustls::version::TLS13])).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (
        status,
        headers,
        resp.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

async fn next_frame<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Frame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(FAILSAFE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            return Frame::decode(&b).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_tls13_only() {
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |c| c.tls = Some(tls_config(31_536_000))).await;

    // HTTPS, with HSTS on success and on error answers.
    let (status, headers, body) = https(relay.addr, Method::GET, "/healthz", vec![]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    let (status, headers, _) = https(relay.addr, Method::GET, "/nowhere", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");

    // Register over HTTPS, then authenticate over WSS.
    let alice = account(&mut rng(31), 1);
    let list = DeviceListBody {
        signed_list: alice.list.signed().as_bytes().to_vec(),
    }
    .encode();
    let path = format!("/v1/accounts/{}/device-list", alice.id());
    assert_eq!(https(relay.addr, Method::PUT, &path, list).await.0, StatusCode::CREATED);
    let tls = connect(relay.addr, client(&[&rustls::version::TLS13])).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/v1/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    let Frame::Challenge(c) = next_frame(&mut ws).await else {
        panic!("expected a challenge")
    };
    ws.send(Message::Binary(answer(&alice.devices[0], &c).encode().into()))
        .await
        .unwrap();
    assert!(matches!(next_frame(&mut ws).await, Frame::AuthOk { .. }));
    assert_eq!(next_frame(&mut ws).await, Frame::QueueEmpty);

    // A client that offers only TLS 1.2 is refused.
    assert!(connect(relay.addr, client(&[&rustls::version::TLS12])).await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(FAILSAFE, async {
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await
    })
    .await
    .unwrap();
    if let Ok((mut sender, conn)) = plain {
        tokio::spawn(conn);
        let req = Request::get("/healthz")
            .header("host", "localhost")
            .body(Full::default())
            .unwrap();
        assert!(
            tokio::time::timeout(FAILSAFE, sender.send_request(req))
                .await
                .unwrap()
                .is_err()
        );
    }

    drop(ws);
    relay.stop().await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hsts_when_disabled_and_bad_certificates_refused() {
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |c| c.tls = Some(tls_config(0))).await;
    let (status, headers, _) = https(relay.addr, Method::GET, "/healthz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("strict-transport-security"));
    relay.stop().await;

    // A key file without a key, or a missing certificate, stops `run` before serving.
    for tls in [
        Tls {
            key_path: fixture("cert.pem"),
            ..tls_config(1)
        },
        Tls {
            cert_path: fixture("missing.pem"),
            ..tls_config(1)
        },
        Tls {
            cert_path: fixture("key.pem"),
            ..tls_config(1)
        },
    ] {
        let config = sotto_relay::Config {
            tls: Some(tls),
            ..Default::default()
        };
        let store = sotto_relay::storage::Store::open(&url, 1).await.unwrap();
        let state = sotto_relay::AppState::new(config, store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = sotto_relay::run(listener, state, std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
    remove_sqlite(&url);
}
