//! RFC 6455 framing as the relay speaks it: a decoder for the frames a client sends and an
//! encoder for the frames the relay sends. No I/O: the caller reads bytes into its own
//! buffer, hands them to [`Decoder::decode`] and drops what it consumed.
//!
//! - Frames from a client must be masked; frames to a client are not (RFC 6455 §5.3).
//! - No extension is negotiated, so the three reserved bits must be zero (§5.2).
//! - A message may be fragmented; control frames (ping, pong, close) may come between its
//!   fragments but are never fragmented themselves and carry at most 125 bytes (§5.4, §5.5).
//! - A message is bounded as a whole: its length is checked against the limit as soon as a
//!   frame header announces it, before its payload is read.
//! - Text must be UTF-8, and so must a close frame's reason (§8.1).
//!
//! Decoding never panics: any byte string decodes to messages, to a request for more
//! bytes, or to a typed [`WsError`] after which the connection is closed with
//! [`WsError::close_code`].
//!
//! ```
//! use sotto_proto::websocket::{Decoded, Decoder, Message, mask_frame};
//!
//! let mut wire = Vec::new();
//! mask_frame(0x2, true, b"hi", [1, 2, 3, 4], &mut wire); // what a client sends
//! let mut d = Decoder::new(1 << 20);
//! assert_eq!(d.decode(&wire[..3]), Ok(Decoded::NeedMore(3)));
//! assert_eq!(
//!     d.decode(&wire),
//!     Ok(Decoded::Message { consumed: 8, message: Message::Binary(b"hi".to_vec()) })
//! );
//! ```

/// The largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest frame header: 2 bytes, a 64-bit length and the 4-byte mask.
pub const MAX_HEADER: usize = 14;

/// The value the relay puts in `Sec-WebSocket-Accept` is the base64 of
/// SHA-1(`Sec-WebSocket-Key` ‖ this GUID) (RFC 6455 §4.2.2).
pub const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// A further fragment of a message.
    pub const CONTINUATION: u8 = 0x0;
    /// The first frame of a text message.
    pub const TEXT: u8 = 0x1;
    /// The first frame of a binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close codes the relay sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The relay is going away (shutting down, or the connection idled out).
    pub const AWAY: u16 = 1001;
    /// The client broke the framing rules.
    pub const PROTOCOL: u16 = 1002;
    /// A text message or close reason that is not UTF-8.
    pub const INVALID: u16 = 1007;
    /// A policy of the relay (authentication failed, replaced, a limit).
    pub const POLICY: u16 = 1008;
    /// A message above the size limit.
    pub const SIZE: u16 = 1009;
    /// An error inside the relay.
    pub const ERROR: u16 = 1011;
}

/// A close frame's status code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: u16,
    /// The reason, at most 123 bytes of UTF-8.
    pub reason: String,
}

/// A complete message, or a control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A binary message: every protocol frame of Sotto travels as one.
    Binary(Vec<u8>),
    /// A text message (the relay answers one with `Error(MALFORMED)`).
    Text(String),
    /// A ping; the answer is a pong with the same payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// A close frame, with its status if it carried one.
    Close(Option<CloseFrame>),
}

/// Why a connection's bytes cannot be read as WebSocket frames. Each ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The framing rules were broken; the text names which.
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A message announced more bytes than the limit.
    #[error("websocket message of {size} bytes above the limit of {max}")]
    TooLarge {
        /// The bytes announced so far (fragments before this one included).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message or a close reason is not UTF-8.
    #[error("websocket text is not UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close_code::PROTOCOL,
            Self::TooLarge { .. } => close_code::SIZE,
            Self::InvalidUtf8 => close_code::INVALID,
        }
    }
}

/// What [`Decoder::decode`] made of the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The bytes end inside a frame: at least this many more are needed.
    NeedMore(usize),
    /// A message or control frame ends `consumed` bytes into the input.
    Message {
        /// Bytes of the input the frame took.
        consumed: usize,
        /// The message.
        message: Message,
    },
    /// A fragment that does not end its message took `consumed` bytes; decode on.
    Fragment {
        /// Bytes of the input the frame took.
        consumed: usize,
    },
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: Vec<u8>,
}

/// Decodes the frames a client sends; keeps a fragmented message between calls.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Option<Partial>,
}

/// A frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: u64,
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes (fragments added up).
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            partial: None,
        }
    }

    /// Whether a fragmented message has started and not ended.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the first frame of `buf`. The caller drops the bytes a
    /// [`Decoded::Message`] or [`Decoded::Fragment`] consumed and calls again with what
    /// follows; on [`Decoded::NeedMore`] it reads more and calls again with the same
    /// bytes and the new ones after them. After an error the connection must close.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, WsError> {
        let h = match header(buf)? {
            Ok(h) => h,
            Err(more) => return Ok(Decoded::NeedMore(more)),
        };
        let control = h.opcode & 0x8 != 0;
        let before = match (h.opcode, &self.partial) {
            (opcode::CLOSE | opcode::PING | opcode::PONG, _) => 0,
            (opcode::CONTINUATION, Some(p)) => p.payload.len(),
            (opcode::CONTINUATION, None) => return Err(WsError::Protocol("continuation frame outside a message")),
            (opcode::TEXT | opcode::BINARY, None) => 0,
            (opcode::TEXT | opcode::BINARY, Some(_)) => {
                return Err(WsError::Protocol("new message inside a fragmented one"));
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        };
        if control {
            if !h.fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if h.payload > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::Protocol("control frame above 125 bytes"));
            }
        }
        let size = (before as u64).saturating_add(h.payload);
        if !control && size > self.max_message as u64 {
            return Err(WsError::TooLarge {
                size,
                max: self.max_message,
            });
        }
        // Bounded by max_message or 125 above, so it fits a usize.
        let payload_len = usize::try_from(h.payload).map_err(|_| WsError::Protocol("frame length"))?;
        let end = h.len.saturating_add(payload_len);
        let Some(masked) = buf.get(h.len..end) else {
            return Ok(Decoded::NeedMore(end - buf.len()));
        };
        let consumed = end;
        let message = match h.opcode {
            opcode::PING => Message::Ping(unmask(masked, h.mask)),
            opcode::PONG => Message::Pong(unmask(masked, h.mask)),
            opcode::CLOSE => Message::Close(close_frame(&unmask(masked, h.mask))?),
            opcode::TEXT | opcode::BINARY if h.fin => data(h.opcode == opcode::TEXT, unmask(masked, h.mask))?,
            opcode::TEXT | opcode::BINARY => {
                self.partial = Some(Partial {
                    text: h.opcode == opcode::TEXT,
                    payload: unmask(masked, h.mask),
                });
                return Ok(Decoded::Fragment { consumed });
            }
            _ => {
                // A continuation: checked above that a message is open.
                let Some(p) = &mut self.partial else {
                    return Err(WsError::Protocol("continuation frame outside a message"));
                };
                unmask_into(masked, h.mask, &mut p.payload);
                if !h.fin {
                    return Ok(Decoded::Fragment { consumed });
                }
                let Some(p) = self.partial.take() else {
                    return Err(WsError::Protocol("continuation frame outside a message"));
                };
                data(p.text, p.payload)?
            }
        };
        Ok(Decoded::Message { consumed, message })
    }
}

/// Parses a frame header: `Ok(Err(n))` when `n` more bytes are needed for it.
fn header(buf: &[u8]) -> Result<Result<Header, usize>, WsError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(Err(2 - buf.len())),
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked frame from a client"));
    }
    let (payload, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(Err(4 + 4 - buf.len())),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(Err(10 + 4 - buf.len())),
        },
        n => (u64::from(n), 2),
    };
    if payload >> 63 != 0 {
        return Err(WsError::Protocol("64-bit length with the high bit set"));
    }
    let Some(mask) = buf.get(at..at + 4).and_then(|m| <[u8; 4]>::try_from(m).ok()) else {
        return Ok(Err(at + 4 - buf.len()));
    };
    Ok(Ok(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        len: at + 4,
        payload,
    }))
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(masked.len());
    unmask_into(masked, mask, &mut out);
    out
}

fn unmask_into(masked: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(masked.len());
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = masked.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        out.extend_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask starts over at its first byte.
    out.extend(chunks.remainder().iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

fn data(text: bool, payload: Vec<u8>) -> Result<Message, WsError> {
    if text {
        String::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Whether a close code may travel in a close frame (RFC 6455 §7.4; 1012–1014 are
/// registered since).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("close code that may not be sent"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// The header of an unmasked frame (what the relay sends): its bytes and their length.
pub fn frame_header(opcode: u8, fin: bool, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = opcode & 0x0f | if fin { 0x80 } else { 0 };
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// Appends `message` to `out` as one unmasked frame. A control frame's payload (a close
/// frame's code and reason) above 125 bytes is a [`WsError::Protocol`], and nothing is
/// appended.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), WsError> {
    let mut close = Vec::new();
    let (op, payload): (u8, &[u8]) = match message {
        Message::Binary(b) => (opcode::BINARY, b),
        Message::Text(t) => (opcode::TEXT, t.as_bytes()),
        Message::Ping(p) => (opcode::PING, p),
        Message::Pong(p) => (opcode::PONG, p),
        Message::Close(None) => (opcode::CLOSE, &[]),
        Message::Close(Some(c)) => {
            close.extend_from_slice(&c.code.to_be_bytes());
            close.extend_from_slice(c.reason.as_bytes());
            (opcode::CLOSE, &close)
        }
    };
    if op & 0x8 != 0 && payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(WsError::Protocol("control frame above 125 bytes"));
    }
    let (h, n) = frame_header(op, true, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends one masked frame, as a client sends it: for tests, fuzzing and clients built
/// on this crate.
pub fn mask_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let (h, n) = frame_header(opcode, fin, payload.len());
    let start = out.len();
    out.extend_from_slice(&h[..n]);
    if let Some(b1) = out.get_mut(start + 1) {
        *b1 |= 0x80;
    }
    out.extend_from_slice(&mask);
    unmask_into(payload, mask, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        mask_frame(op, fin, payload, M, &mut v);
        v
    }

    /// Decodes every message of `wire`, fed at once.
    fn all(d: &mut Decoder, mut wire: &[u8]) -> Result<Vec<Message>, WsError> {
        let mut out = Vec::new();
        loop {
            match d.decode(wire)? {
                Decoded::NeedMore(_) => return Ok(out),
                Decoded::Message { consumed, message } => {
                    out.push(message);
                    wire = &wire[consumed..];
                }
                Decoded::Fragment { consumed } => wire = &wire[consumed..],
            }
        }
    }

    #[test]
    fn rfc_6455_example_masked_hello() {
        // RFC 6455 §5.7: "A single-frame masked text message".
        let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(masked(opcode::TEXT, true, b"Hello"), wire);
        let mut d = Decoder::new(100);
        assert_eq!(
            d.decode(&wire),
            Ok(Decoded::Message {
                consumed: 11,
                message: Message::Text("Hello".into())
            })
        );
    }

    #[test]
    fn rfc_6455_example_fragments_and_ping() {
        // §5.7: "Hel" + "lo" in two fragments, with a ping between them.
        let mut wire = masked(opcode::TEXT, false, b"Hel");
        wire.extend(masked(opcode::PING, true, b"Hello"));
        wire.extend(masked(opcode::CONTINUATION, true, b"lo"));
        let mut d = Decoder::new(100);
        assert_eq!(
            all(&mut d, &wire),
            Ok(vec![Message::Ping(b"Hello".to_vec()), Message::Text("Hello".into())])
        );
        assert!(!d.in_message());
    }

    #[test]
    fn unmasked_example_frames_are_what_the_relay_sends() {
        // §5.7: unmasked "Hello", and a 256-byte and a 65536-byte binary header.
        let mut out = Vec::new();
        encode(&Message::Text("Hello".into()), &mut out).unwrap();
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let (h, n) = frame_header(opcode::BINARY, true, 256);
        assert_eq!(h[..n], [0x82, 0x7e, 0x01, 0x00]);
        let (h, n) = frame_header(opcode::BINARY, true, 65536);
        assert_eq!(h[..n], [0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        out.clear();
        encode(
            &Message::Close(Some(CloseFrame {
                code: close_code::POLICY,
                reason: String::new(),
            })),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0x88, 0x02, 0x03, 0xf0]);
    }

    #[test]
    fn long_lengths_decode() {
        for len in [125usize, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = masked(opcode::BINARY, true, &payload);
            let mut d = Decoder::new(1 << 20);
            assert_eq!(
                d.decode(&wire),
                Ok(Decoded::Message {
                    consumed: wire.len(),
                    message: Message::Binary(payload)
                }),
                "{len}"
            );
        }
    }

    #[test]
    fn need_more_counts_what_is_missing() {
        let wire = masked(opcode::BINARY, true, &[7; 300]);
        let mut d = Decoder::new(1 << 20);
        assert_eq!(d.decode(&[]), Ok(Decoded::NeedMore(2)));
        assert_eq!(d.decode(&wire[..1]), Ok(Decoded::NeedMore(1)));
        assert_eq!(d.decode(&wire[..2]), Ok(Decoded::NeedMore(6)));
        assert_eq!(d.decode(&wire[..5]), Ok(Decoded::NeedMore(3)));
        assert_eq!(d.decode(&wire[..8]), Ok(Decoded::NeedMore(300)));
        assert_eq!(d.decode(&wire[..100]), Ok(Decoded::NeedMore(208)));
    }

    #[test]
    fn framing_violations_are_typed() {
        let mut d = Decoder::new(100);
        let mut unmasked = Vec::new();
        encode(&Message::Binary(b"x".to_vec()), &mut unmasked).unwrap();
        assert_eq!(
            d.decode(&unmasked),
            Err(WsError::Protocol("unmasked frame from a client"))
        );
        let mut rsv = masked(opcode::BINARY, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(d.decode(&rsv), Err(WsError::Protocol(_))));
        for op in [3u8, 7, 0xb, 0xf] {
            assert!(
                matches!(
                    Decoder::new(100).decode(&masked(op, true, b"")),
                    Err(WsError::Protocol(_))
                ),
                "{op}"
            );
        }
        assert!(matches!(
            Decoder::new(100).decode(&masked(opcode::CONTINUATION, true, b"x")),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            Decoder::new(100).decode(&masked(opcode::PING, false, b"x")),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            Decoder::new(1000).decode(&masked(opcode::PING, true, &[0; 126])),
            Err(WsError::Protocol(_))
        ));
        let mut d = Decoder::new(100);
        let mut wire = masked(opcode::BINARY, false, b"a");
        wire.extend(masked(opcode::TEXT, true, b"b"));
        assert!(matches!(all(&mut d, &wire), Err(WsError::Protocol(_))));
        let mut high = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        high.extend(M);
        assert!(matches!(Decoder::new(100).decode(&high), Err(WsError::Protocol(_))));
    }

    #[test]
    fn size_is_checked_on_the_header_and_across_fragments() {
        // Only the header of a huge frame has arrived: refused at once.
        let mut head = vec![0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0];
        head.extend(M);
        assert_eq!(
            Decoder::new(1000).decode(&head),
            Err(WsError::TooLarge {
                size: 1 << 32,
                max: 1000
            })
        );
        let mut d = Decoder::new(10);
        let mut wire = masked(opcode::BINARY, false, &[1; 6]);
        wire.extend(masked(opcode::CONTINUATION, true, &[2; 5]));
        assert_eq!(all(&mut d, &wire), Err(WsError::TooLarge { size: 11, max: 10 }));
        let mut d = Decoder::new(10);
        let mut wire = masked(opcode::BINARY, false, &[1; 6]);
        wire.extend(masked(opcode::CONTINUATION, true, &[2; 4]));
        assert_eq!(
            all(&mut d, &wire),
            Ok(vec![Message::Binary([[1; 6].as_slice(), &[2; 4]].concat())])
        );
    }

    #[test]
    fn text_and_close_reasons_must_be_utf8() {
        assert_eq!(
            Decoder::new(100).decode(&masked(opcode::TEXT, true, &[0xff])),
            Err(WsError::InvalidUtf8)
        );
        // A code point split across fragments is fine.
        let mut wire = masked(opcode::TEXT, false, &[0xc3]);
        wire.extend(masked(opcode::CONTINUATION, true, &[0xa9]));
        assert_eq!(all(&mut Decoder::new(100), &wire), Ok(vec![Message::Text("é".into())]));
        assert_eq!(
            Decoder::new(100).decode(&masked(opcode::CLOSE, true, &[0x03, 0xe8, 0xff])),
            Err(WsError::InvalidUtf8)
        );
    }

    #[test]
    fn close_frames() {
        let d = |p: &[u8]| match Decoder::new(100).decode(&masked(opcode::CLOSE, true, p)) {
            Ok(Decoded::Message {
                message: Message::Close(c),
                ..
            }) => Ok(c),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(d(&[]), Ok(None));
        assert_eq!(
            d(&[0x03, 0xe8, b'o', b'k']),
            Ok(Some(CloseFrame {
                code: 1000,
                reason: "ok".into()
            }))
        );
        assert!(d(&[0x03]).is_err());
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(d(&bad.to_be_bytes()).is_err(), "{bad}");
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(d(&good.to_be_bytes()).is_ok(), "{good}");
        }
    }

    #[test]
    fn control_payload_is_bounded_when_encoding() {
        let mut out = Vec::new();
        assert!(encode(&Message::Ping(vec![0; 126]), &mut out).is_err());
        assert!(out.is_empty());
        assert!(encode(&Message::Ping(vec![0; 125]), &mut out).is_ok());
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(Message::Binary),
            ".{0,80}".prop_map(Message::Text),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Message::Ping),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Message::Pong),
        ]
    }

    proptest! {
        /// Messages split into fragments (with control frames between them), sent as a
        /// client would, and read back in arbitrary pieces: the same messages come out.
        #[test]
        fn fragmented_masked_messages_read_in_any_pieces(
            messages in proptest::collection::vec((message(), 1usize..4, any::<[u8; 4]>()), 1..8),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = Vec::new();
            for (m, parts, mask) in &messages {
                let (op, payload) = match m {
                    Message::Binary(b) => (opcode::BINARY, b.clone()),
                    Message::Text(t) => (opcode::TEXT, t.clone().into_bytes()),
                    Message::Ping(p) => (opcode::PING, p.clone()),
                    Message::Pong(p) => (opcode::PONG, p.clone()),
                    Message::Close(_) => unreachable!(),
                };
                if op & 0x8 != 0 {
                    mask_frame(op, true, &payload, *mask, &mut wire);
                    continue;
                }
                let step = payload.len().div_ceil(*parts).max(1);
                let mut chunks: Vec<&[u8]> = payload.chunks(step).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                for (i, c) in chunks.iter().enumerate() {
                    let op = if i == 0 { op } else { opcode::CONTINUATION };
                    mask_frame(op, i + 1 == chunks.len(), c, *mask, &mut wire);
                    if i == 0 && chunks.len() > 1 {
                        mask_frame(opcode::PONG, true, b"between", *mask, &mut wire);
                    }
                }
            }
            // Read in pieces: the buffer grows by the next cut, and consumed bytes go.
            let mut d = Decoder::new(1 << 16);
            let mut buf: Vec<u8> = Vec::new();
            let mut out = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < wire.len() || !buf.is_empty() {
                let n = (*cut.next().unwrap()).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                loop {
                    match d.decode(&buf).unwrap() {
                        Decoded::NeedMore(k) => {
                            prop_assert!(k >= 1);
                            break;
                        }
                        Decoded::Message { consumed, message } => {
                            buf.drain(..consumed);
                            out.push(message);
                        }
                        Decoded::Fragment { consumed } => {
                            buf.drain(..consumed);
                        }
                    }
                }
                if at == wire.len() {
                    prop_assert!(buf.is_empty());
                    break;
                }
            }
            let expected: Vec<Message> = messages
                .iter()
                .flat_map(|(m, parts, _)| {
                    let fragmented = match m {
                        Message::Binary(b) => b.len().div_ceil(*parts).max(1) < b.len(),
                        Message::Text(t) => t.len().div_ceil(*parts).max(1) < t.len(),
                        _ => false,
                    };
                    let between = fragmented.then(|| Message::Pong(b"between".to_vec()));
                    between.into_iter().chain([m.clone()])
                })
                .collect();
            prop_assert_eq!(out, expected);
        }

        /// Any bytes: a typed error, a request for more, or a frame no longer than the
        /// input; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::new(256);
            let mut rest: &[u8] = &bytes;
            while let Ok(step) = d.decode(rest) {
                match step {
                    Decoded::NeedMore(n) => { prop_assert!(n >= 1); break; }
                    Decoded::Message { consumed, .. } | Decoded::Fragment { consumed } => {
                        prop_assert!(consumed >= 2 && consumed <= rest.len());
                        rest = &rest[consumed..];
                    }
                }
            }
        }
    }
}
