//! The web transport backend (wasm32): the platform's `fetch` and `WebSocket`, in a
//! browser, a worker, or node (20 with `--experimental-websocket`, 22 and later as is).
//!
//! TLS is the platform's: the browser's trust store decides, so
//! `ClientOptions::extra_root_certificates` does not apply here. Browsers neither send
//! WebSocket pings nor report the relay's, so the heartbeat is the relay's (the browser
//! answers its pings) and a dead connection shows as the socket closing.

use std::cell::Cell;
use std::rc::Rc;

use js_sys::{Reflect, Uint8Array};
use tokio::sync::mpsc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    BinaryType, CloseEvent, Event, Headers, MessageEvent, ReadableStreamDefaultReader, RequestInit, WebSocket,
};

use super::{MAX_FRAME, Method, TransportError};

/// Frames received and not yet read. The relay sends at most its delivery window of
/// unacknowledged envelopes (at most 1024, docs/protocol.md §13), the answers to at most
/// 32 pipelined sends and ephemeral frames; a socket that overflows this is closed (and
/// the client reconnects and resumes) rather than buffering without bound.
const RECEIVE_QUEUE: usize = 4096;

#[wasm_bindgen]
extern "C" {
    /// The global `fetch` (window, worker or node).
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_request(input: &web_sys::Request) -> js_sys::Promise;
}

/// A JavaScript exception as a transport error, with its message only.
fn js(e: JsValue) -> TransportError {
    let text = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "the platform refused".into());
    TransportError::Io(text)
}

/// Where the relay is.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    base: String,
    ws_url: String,
}

impl Endpoint {
    /// `host` (an IPv6 address in brackets) and `port` of a URL already checked by the
    /// caller. Extra root certificates do not apply on the web (the platform's trust
    /// store decides).
    pub(super) fn new(host: &str, port: &str, tls: bool, _extra_roots_pem: &[Vec<u8>]) -> Result<Self, TransportError> {
        let (http, ws) = if tls { ("https", "wss") } else { ("http", "ws") };
        Ok(Self {
            base: format!("{http}://{host}:{port}"),
            ws_url: format!("{ws}://{host}:{port}/v1/ws"),
        })
    }

    /// One `fetch`: the status and at most `extra.max_response` bytes of body.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
        extra: &super::Extra,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let headers = Headers::new().map_err(js)?;
        headers.set("content-type", "application/octet-stream").map_err(js)?;
        if let Some(a) = auth {
            headers.set("authorization", &a).map_err(js)?;
        }
        if let Some((first, last)) = extra.range {
            headers.set("range", &format!("bytes={first}-{last}")).map_err(js)?;
        }
        let init = RequestInit::new();
        init.set_headers(&headers);
        match method {
            Method::Get => init.set_method("GET"),
            Method::Delete => init.set_method("DELETE"),
            Method::Put => {
                init.set_method("PUT");
                init.set_body(&Uint8Array::from(body.as_slice()));
            }
        }
        let url = format!("{}{path}", self.base);
        let request = web_sys::Request::new_with_str_and_init(&url, &init).map_err(js)?;
        let response: web_sys::Response = JsFuture::from(fetch_with_request(&request))
            .await
            .map_err(js)?
            .dyn_into()
            .map_err(js)?;
        let status = response.status();
        let Some(stream) = response.body() else {
            return Ok((status, Vec::new()));
        };
        let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
        let mut out = Vec::new();
        loop {
            let chunk = JsFuture::from(reader.read()).await.map_err(js)?;
            if Reflect::get(&chunk, &"done".into()).map_err(js)?.is_truthy() {
                break;
            }
            let value: Uint8Array = Reflect::get(&chunk, &"value".into())
                .map_err(js)?
                .dyn_into()
                .map_err(js)?;
            if out.len() + value.length() as usize > extra.max_response {
                let _ = reader.cancel();
                return Err(TransportError::Protocol("the answer is too large".into()));
            }
            out.extend_from_slice(&value.to_vec());
        }
        Ok((status, out))
    }

    /// Opens the WebSocket `/v1/ws` and waits until it is open.
    pub(super) async fn open_ws(&self) -> Result<Ws, TransportError> {
        let socket = WebSocket::new(&self.ws_url).map_err(js)?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        let overflow = Rc::new(Cell::new(false));
        let handlers = Handlers::attach(&socket, tx, overflow.clone());
        let mut ws = Ws {
            socket,
            rx,
            overflow,
            _handlers: handlers,
        };
        match ws.rx.recv().await {
            Some(Incoming::Open) => Ok(ws),
            Some(Incoming::Error) | Some(Incoming::Closed) | None => {
                ws.close().await;
                Err(TransportError::Io("the WebSocket did not open".into()))
            }
            Some(Incoming::Frame(_)) => {
                ws.close().await;
                Err(TransportError::Protocol("a frame before the socket opened".into()))
            }
        }
    }
}

/// What the socket's event handlers report.
enum Incoming {
    Open,
    Frame(Vec<u8>),
    Closed,
    Error,
}

/// The socket's event handlers, kept alive while the socket is in use and detached
/// when it is dropped.
struct Handlers {
    socket: WebSocket,
    _open: Closure<dyn FnMut(Event)>,
    _message: Closure<dyn FnMut(MessageEvent)>,
    _close: Closure<dyn FnMut(CloseEvent)>,
    _error: Closure<dyn FnMut(Event)>,
}

impl Handlers {
    fn attach(socket: &WebSocket, tx: mpsc::Sender<Incoming>, overflow: Rc<Cell<bool>>) -> Self {
        // A full queue closes the socket: the client reconnects and resumes from its
        // last acknowledged envelope, so nothing is lost.
        let push = {
            let socket = socket.clone();
            move |tx: &mpsc::Sender<Incoming>, item: Incoming| {
                if tx.try_send(item).is_err() && !overflow.get() {
                    overflow.set(true);
                    let _ = socket.close();
                }
            }
        };
        let open = {
            let (tx, push) = (tx.clone(), push.clone());
            Closure::<dyn FnMut(Event)>::new(move |_: Event| push(&tx, Incoming::Open))
        };
        let message = {
            let (tx, push) = (tx.clone(), push.clone());
            Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                let data = e.data();
                let item = match data.dyn_ref::<js_sys::ArrayBuffer>() {
                    Some(b) if b.byte_length() as usize <= MAX_FRAME => Incoming::Frame(Uint8Array::new(b).to_vec()),
                    // Too large, or text: the relay sends neither.
                    _ => Incoming::Error,
                };
                push(&tx, item);
            })
        };
        let close = {
            let (tx, push) = (tx.clone(), push.clone());
            Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| push(&tx, Incoming::Closed))
        };
        let error = Closure::<dyn FnMut(Event)>::new(move |_: Event| push(&tx, Incoming::Error));
        socket.set_onopen(Some(open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(close.as_ref().unchecked_ref()));
        socket.set_onerror(Some(error.as_ref().unchecked_ref()));
        Self {
            socket: socket.clone(),
            _open: open,
            _message: message,
            _close: close,
            _error: error,
        }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
        let _ = self.socket.close();
    }
}

/// An open WebSocket.
pub(super) struct Ws {
    socket: WebSocket,
    rx: mpsc::Receiver<Incoming>,
    overflow: Rc<Cell<bool>>,
    _handlers: Handlers,
}

impl Ws {
    /// The platform does not report pings and pongs.
    pub(super) const SEES_PINGS: bool = false;

    pub(super) async fn send(&mut self, bytes: Vec<u8>) -> Result<(), TransportError> {
        if self.socket.ready_state() != WebSocket::OPEN {
            return Err(TransportError::Io("the WebSocket is closed".into()));
        }
        self.socket.send_with_u8_array(&bytes).map_err(js)
    }

    /// Browsers cannot send pings: nothing to do.
    pub(super) async fn ping(&mut self) -> Result<(), TransportError> {
        if self.socket.ready_state() == WebSocket::OPEN {
            Ok(())
        } else {
            Err(TransportError::Io("the WebSocket is closed".into()))
        }
    }

    /// The next message: `Some(Some(bytes))` for a binary message, `None` when the
    /// socket closed.
    pub(super) async fn next(&mut self) -> Result<Option<Option<Vec<u8>>>, TransportError> {
        if self.overflow.get() {
            return Err(TransportError::Io("too many frames unread; reconnecting".into()));
        }
        match self.rx.recv().await {
            Some(Incoming::Frame(b)) => Ok(Some(Some(b))),
            Some(Incoming::Open) => Ok(Some(None)),
            Some(Incoming::Closed) | None => Ok(None),
            Some(Incoming::Error) => Err(TransportError::Io("WebSocket error".into())),
        }
    }

    pub(super) async fn close(&mut self) {
        let _ = self.socket.close();
    }
}
