//! Built-in TLS: HTTPS and WSS with TLS 1.3 only, HSTS on every response, a clear
//! error for a certificate that does not load, and a certificate rotated without a
//! restart (on reload and on SIGHUP). The certificates are test-only fixtures
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
    for ca in ["ca.pem", "ca2.pem"] {
        for cert in CertificateDer::pem_file_iter(fixture(ca)).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
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

/// The DER of the first certificate in a fixture.
fn der(name: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(fixture(name))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The certificate a new connection to `addr` is shown.
async fn presented(addr: SocketAddr) -> Vec<u8> {
    let tls = connect(addr, client(&[&rustls::version::TLS13])).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Copies fixture pair `n` ("" or "2") over the files the relay reads.
fn install(dir: &std::path::Path, n: &str) {
    std::fs::copy(fixture(&format!("cert{n}.pem")), dir.join("cert.pem")).unwrap();
    std::fs::copy(fixture(&format!("key{n}.pem")), dir.join("key.pem")).unwrap();
}

/// An HTTP/1.1 `GET /healthz` on an open TLS stream answers 200.
async fn healthy(tls: &mut TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(FAILSAFE, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_rotated_without_a_restart() {
    let url = sqlite_url();
    let dir = std::path::Path::new(&url.strip_prefix("sqlite://").unwrap())
        .parent()
        .unwrap()
        .to_owned();
    install(&dir, "");
    let tls = Tls {
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
        hsts_max_age_secs: 1,
    };
    let mut relay = Relay::start(&url, |c| c.tls = Some(tls)).await;
    assert_eq!(presented(relay.addr).await, der("cert.pem"));
    let mut open = connect(relay.addr, client(&[&rustls::version::TLS13])).await.unwrap();

    // A file that does not load: an error, and the pair in use stays.
    std::fs::write(dir.join("cert.pem"), b"-----BEGIN CERTIFICATE-----\nnot one\n").unwrap();
    assert!(matches!(relay.state.reload_tls(), Some(Err(_))));
    assert_eq!(presented(relay.addr).await, der("cert.pem"));
    // A certificate with another certificate's key: refused likewise.
    std::fs::copy(fixture("cert2.pem"), dir.join("cert.pem")).unwrap();
    assert!(matches!(relay.state.reload_tls(), Some(Err(_))));
    assert_eq!(presented(relay.addr).await, der("cert.pem"));

    // The new pair: new connections get it, the open one goes on.
    install(&dir, "2");
    assert!(matches!(relay.state.reload_tls(), Some(Ok(()))));
    assert_eq!(relay.state.tls_certificate(), Some(der("cert2.pem")));
    assert_eq!(presented(relay.addr).await, der("cert2.pem"));
    healthy(&mut open).await;
    relay.stop().await;
    remove_sqlite(&url);
}

/// A `sotto-relay` process with `args` (and nothing of the caller's environment), its
/// log lines, and a way to wait for one.
struct Process {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Process {
    fn start(args: &[&std::ffi::OsStr]) -> Process {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
            .env_clear()
            .args(["--log-level", "info"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Process { child, lines }
    }

    async fn wait_for(&mut self, what: &str) {
        let lines = &mut self.lines;
        tokio::time::timeout(FAILSAFE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains(what) {
                    return;
                }
            }
            panic!("the relay exited before logging {what:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {what:?} within the failsafe"));
    }

    fn hang_up(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// `sotto-relay` itself reads the pair again on SIGHUP (`systemctl reload`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_a_running_relay() {
    let url = sqlite_url();
    let dir = std::path::Path::new(&url.strip_prefix("sqlite://").unwrap())
        .parent()
        .unwrap()
        .to_owned();
    install(&dir, "");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (listen, public) = (addr.to_string(), format!("https://{addr}"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut relay = Process::start(&[
        "--listen".as_ref(),
        listen.as_ref(),
        "--public-url".as_ref(),
        public.as_ref(),
        "--database-url".as_ref(),
        url.as_ref(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    relay.wait_for("relay listening").await;
    assert_eq!(presented(addr).await, der("cert.pem"));
    install(&dir, "2");
    relay.hang_up();
    relay.wait_for("TLS certificate reloaded").await;
    assert_eq!(presented(addr).await, der("cert2.pem"));
    relay.child.start_kill().unwrap();
    let _ = relay.child.wait().await;
    remove_sqlite(&url);
}

/// A relay that serves no TLS takes a SIGHUP (a `systemctl reload`) without ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_leaves_the_relay_serving() {
    let url = sqlite_url();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let listen = addr.to_string();
    let mut relay = Process::start(&[
        "--listen".as_ref(),
        listen.as_ref(),
        "--database-url".as_ref(),
        url.as_ref(),
    ]);
    relay.wait_for("relay listening").await;
    relay.hang_up();
    relay.wait_for("nothing to reload").await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(FAILSAFE, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert!(relay.child.try_wait().unwrap().is_none(), "the relay ended");
    relay.child.start_kill().unwrap();
    let _ = relay.child.wait().await;
    remove_sqlite(&url);
}
