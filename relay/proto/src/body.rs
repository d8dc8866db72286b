//! HTTP request and response bodies (`application/octet-stream`) and the
//! `Authorization` header.
//!
//! ```text
//! every body = version (0x01) ‖ fields
//!
//! DeviceListBody   len (u32) ‖ signed device list            PUT/GET /v1/accounts/{id}/device-list
//! Challenge        nonce (32) ‖ relay_id (32) ‖ timestamp_ms   GET /v1/auth/challenge
//! PreKeyUpload     has_spk (u8) ‖ [SPK record] ‖ n (u16) ‖ n × OPK record
//!                  ‖ m (u16) ‖ m × ML-KEM one-time record ‖ has_lr (u8) ‖ [ML-KEM last-resort record]
//!                                                             PUT /v1/prekeys
//! PreKeyCounts     one_time (u32) ‖ kem_one_time (u32) ‖ has_spk (u8) ‖ has_lr (u8)
//!                                                             GET /v1/prekeys/count
//! Bundles          n (u16) ‖ n × (len (u32) ‖ PreKeyBundle)   GET /v1/accounts/{id}/bundles[/{device}]
//! PushRegistration provider (u8) ‖ len (u32) ‖ token          PUT /v1/push
//! AccessPolicy     verifier (32) ‖ accept_requests (u8)       PUT /v1/access
//! ProfileUpload    version (32) ‖ len (u32) ‖ ciphertext      PUT /v1/profile
//! ProfileBody      len (u32) ‖ ciphertext                     GET /v1/accounts/{id}/profile/{version}
//! ErrorBody        code (u16)                                 any 4xx/5xx answer
//! BlobIssuer       epoch (u32) ‖ public (32) ‖ max_blob_len (u64) ‖ tokens_per_day (u32)
//!                                                             GET /v1/blobs/issuer
//! TokenIssue       epoch (u32) ‖ n (u16) ‖ n × blinded (32)   PUT /v1/blobs/tokens
//! TokenIssued      epoch (u32) ‖ n (u16) ‖ n × evaluated (32) ‖ proof (64)
//!                                                             answer of PUT /v1/blobs/tokens
//! BlobCreate       epoch (u32) ‖ token (64) ‖ length (u64)    PUT /v1/blobs
//! BlobCreated      id (32)                                    answer of PUT /v1/blobs
//! BlobStatus       length (u64) ‖ received (u64)              PUT /v1/blobs/{id}/{offset},
//!                                                             GET /v1/blobs/{id}/status
//!
//! records are crypto-core's: kind ‖ id (u32) ‖ public key ‖ signature (64)
//! a profile ciphertext is 1..=MAX_PROFILE_BYTES opaque bytes
//! a token batch has 1..=MAX_TOKEN_BATCH (32) points; a blob's length is at least 1 and
//! a status's received at most its length
//! Authorization: Sotto-v1 <lowercase hex of version ‖ AuthResponse>
//! ```

use sotto_crypto::{KemPreKey, PreKeyBundle, PreKeyKind, X25519PreKey};

use crate::codec::{DecodeError, Put, Reader};
use crate::error_code::ErrorCode;
use crate::frame::{AuthResponse, Challenge};
use crate::limits;

/// An HTTP body: encodes to bytes that start with the protocol version.
pub trait Body: Sized {
    /// Encodes the body.
    fn encode(&self) -> Vec<u8>;
    /// Decodes a body; any byte string yields a value or a typed error.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

fn decode_with<T>(bytes: &[u8], f: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version(crate::VERSION)?;
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}

fn encode_with(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = vec![crate::VERSION];
    f(&mut out);
    out
}

impl Body for Challenge {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| self.encode_into(o))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, Challenge::decode_from)
    }
}

impl Body for AuthResponse {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| self.encode_into(o))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, AuthResponse::decode_from)
    }
}

/// A signed device list (crypto-core `SignedDeviceList` encoding) as an HTTP body.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceListBody {
    /// The signed list's bytes.
    pub signed_list: Vec<u8>,
}

impl Body for DeviceListBody {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| o.put_var(&self.signed_list))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                signed_list: r.var_bytes("device list", limits::MAX_DEVICE_LIST_LEN)?.to_vec(),
            })
        })
    }
}

/// Prekeys a device uploads for itself. Every record is checked against the device's DSK
/// by the relay before it is stored.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PreKeyUpload {
    /// A new signed prekey (replaces the stored one).
    pub signed_prekey: Option<X25519PreKey>,
    /// One-time X25519 prekeys to add.
    pub one_time_prekeys: Vec<X25519PreKey>,
    /// One-time ML-KEM prekeys to add.
    pub kem_prekeys: Vec<KemPreKey>,
    /// A new last-resort ML-KEM prekey (replaces the stored one).
    pub last_resort_kem_prekey: Option<KemPreKey>,
}

fn x25519_record(r: &mut Reader<'_>, kind: PreKeyKind, field: &'static str) -> Result<X25519PreKey, DecodeError> {
    let k = X25519PreKey::decode(r.bytes(X25519PreKey::ENCODED_LEN)?).map_err(|_| DecodeError::Invalid { field })?;
    if k.kind != kind {
        return Err(DecodeError::Invalid { field });
    }
    Ok(k)
}

fn kem_record(r: &mut Reader<'_>, kind: PreKeyKind, field: &'static str) -> Result<KemPreKey, DecodeError> {
    let k = KemPreKey::decode(r.bytes(KemPreKey::ENCODED_LEN)?).map_err(|_| DecodeError::Invalid { field })?;
    if k.kind != kind {
        return Err(DecodeError::Invalid { field });
    }
    Ok(k)
}

impl Body for PreKeyUpload {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u8(u8::from(self.signed_prekey.is_some()));
            if let Some(k) = &self.signed_prekey {
                k.encode_into(o);
            }
            o.put_count(self.one_time_prekeys.len());
            for k in &self.one_time_prekeys {
                k.encode_into(o);
            }
            o.put_count(self.kem_prekeys.len());
            for k in &self.kem_prekeys {
                k.encode_into(o);
            }
            o.put_u8(u8::from(self.last_resort_kem_prekey.is_some()));
            if let Some(k) = &self.last_resort_kem_prekey {
                k.encode_into(o);
            }
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let signed_prekey = if r.flag("signed prekey flag")? {
                Some(x25519_record(r, PreKeyKind::Signed, "signed prekey")?)
            } else {
                None
            };
            let n = r.count(
                "one-time prekeys",
                limits::MAX_ONE_TIME_PREKEYS_PER_UPLOAD,
                X25519PreKey::ENCODED_LEN,
            )?;
            let mut one_time_prekeys = Vec::with_capacity(n);
            for _ in 0..n {
                one_time_prekeys.push(x25519_record(r, PreKeyKind::OneTime, "one-time prekey")?);
            }
            let n = r.count(
                "ML-KEM prekeys",
                limits::MAX_KEM_PREKEYS_PER_UPLOAD,
                KemPreKey::ENCODED_LEN,
            )?;
            let mut kem_prekeys = Vec::with_capacity(n);
            for _ in 0..n {
                kem_prekeys.push(kem_record(r, PreKeyKind::KemOneTime, "ML-KEM prekey")?);
            }
            let last_resort_kem_prekey = if r.flag("last-resort flag")? {
                Some(kem_record(r, PreKeyKind::KemLastResort, "last-resort ML-KEM prekey")?)
            } else {
                None
            };
            Ok(Self {
                signed_prekey,
                one_time_prekeys,
                kem_prekeys,
                last_resort_kem_prekey,
            })
        })
    }
}

/// How many prekeys the relay holds for the authenticated device.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PreKeyCounts {
    /// One-time X25519 prekeys left.
    pub one_time: u32,
    /// One-time ML-KEM prekeys left.
    pub kem_one_time: u32,
    /// Whether a signed prekey is stored.
    pub has_signed_prekey: bool,
    /// Whether a last-resort ML-KEM prekey is stored.
    pub has_last_resort: bool,
}

impl Body for PreKeyCounts {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u32(self.one_time);
            o.put_u32(self.kem_one_time);
            o.put_u8(u8::from(self.has_signed_prekey));
            o.put_u8(u8::from(self.has_last_resort));
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                one_time: r.u32()?,
                kem_one_time: r.u32()?,
                has_signed_prekey: r.flag("signed prekey flag")?,
                has_last_resort: r.flag("last-resort flag")?,
            })
        })
    }
}

/// Prekey bundles: one per device asked for.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Bundles {
    /// The bundles, in device-id order.
    pub bundles: Vec<PreKeyBundle>,
}

impl Body for Bundles {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_count(self.bundles.len());
            for b in &self.bundles {
                o.put_var(&b.encode());
            }
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let n = r.count("bundles", limits::MAX_BUNDLES, 4)?;
            let mut bundles = Vec::with_capacity(n);
            for _ in 0..n {
                let b = r.var_bytes("bundle", PreKeyBundle::MAX_LEN)?;
                bundles.push(PreKeyBundle::decode(b).map_err(|_| DecodeError::Invalid { field: "bundle" })?);
            }
            Ok(Self { bundles })
        })
    }
}

/// A push service.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
#[repr(u8)]
pub enum PushProvider {
    /// Apple Push Notification service: the token is the device token.
    Apns = 1,
    /// Firebase Cloud Messaging: the token is the registration token.
    Fcm = 2,
    /// Web Push: the token is the subscription (endpoint and keys) as the client encodes it.
    WebPush = 3,
    /// UnifiedPush: the token is the endpoint URL.
    UnifiedPush = 4,
    /// A generic webhook: the token is the URL.
    Webhook = 5,
}

impl PushProvider {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the byte on the wire.
    pub fn from_byte(value: u8) -> Result<Self, DecodeError> {
        Ok(match value {
            1 => Self::Apns,
            2 => Self::Fcm,
            3 => Self::WebPush,
            4 => Self::UnifiedPush,
            5 => Self::Webhook,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "push provider",
                    value,
                });
            }
        })
    }
}

/// A push registration for the authenticated device. The relay stores it; a push carries
/// no content and no sender.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushRegistration {
    /// The push service.
    pub provider: PushProvider,
    /// The token or endpoint, opaque to the relay.
    pub token: Vec<u8>,
}

impl Body for PushRegistration {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u8(self.provider.to_byte());
            o.put_var(&self.token);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                provider: PushProvider::from_byte(r.u8()?)?,
                token: r.var_bytes("push token", limits::MAX_PUSH_TOKEN_LEN)?.to_vec(),
            })
        })
    }
}

/// `PUT /v1/access`: the account's access verifier and whether it takes message requests
/// (sends without its access key) at all. Any listed device of the account may set it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AccessPolicy {
    /// `SHA-256("Sotto-v1 access key" ‖ access key)` ([`crate::AccessKey::verifier`]).
    pub verifier: [u8; 32],
    /// When false, a send without the access key is refused (`ACCESS_DENIED`) instead of
    /// being stored as a message request.
    pub accept_requests: bool,
}

impl Body for AccessPolicy {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put(&self.verifier);
            o.put_u8(u8::from(self.accept_requests));
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let verifier = r.array()?;
            let accept_requests = r.flag("accept requests")?;
            Ok(Self {
                verifier,
                accept_requests,
            })
        })
    }
}

/// Reads a profile ciphertext: a `u32` length of 1..=[`limits::MAX_PROFILE_BYTES`] and
/// that many bytes.
fn profile_ciphertext(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let field = "profile ciphertext";
    let bytes = r.var_bytes(field, limits::MAX_PROFILE_BYTES)?;
    if bytes.is_empty() {
        return Err(DecodeError::Invalid { field });
    }
    Ok(bytes.to_vec())
}

/// `PUT /v1/profile`: the account's encrypted profile, stored by the relay in place of the
/// one before, and the version it is fetched by (derived by clients from the profile key,
/// which the relay never sees). Its `Debug` shows only the ciphertext's length.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileUpload {
    /// The version: whoever presents it may fetch the ciphertext.
    pub version: [u8; 32],
    /// The encrypted profile, 1..=[`limits::MAX_PROFILE_BYTES`] opaque bytes.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for ProfileUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileUpload")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl Body for ProfileUpload {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put(&self.version);
            o.put_var(&self.ciphertext);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let version = r.array()?;
            let ciphertext = profile_ciphertext(r)?;
            Ok(Self { version, ciphertext })
        })
    }
}

/// The answer of `GET /v1/accounts/{account}/profile/{version}`: the stored encrypted
/// profile. Its `Debug` shows only the ciphertext's length.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileBody {
    /// The encrypted profile, 1..=[`limits::MAX_PROFILE_BYTES`] opaque bytes.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for ProfileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileBody")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl Body for ProfileBody {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| o.put_var(&self.ciphertext))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                ciphertext: profile_ciphertext(r)?,
            })
        })
    }
}

/// `GET /v1/blobs/issuer`: the blob store's current token issuer (docs/protocol.md §16.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobIssuer {
    /// The issuer epoch of `public`.
    pub epoch: u32,
    /// The epoch's issuer public key `K` (ristretto255, compressed), which issuances are
    /// proved against.
    pub public: [u8; 32],
    /// The largest blob the relay stores, in bytes.
    pub max_blob_len: u64,
    /// How many tokens one device may be issued per day.
    pub tokens_per_day: u32,
}

impl Body for BlobIssuer {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u32(self.epoch);
            o.put(&self.public);
            o.put_u64(self.max_blob_len);
            o.put_u32(self.tokens_per_day);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                epoch: r.u32()?,
                public: r.array()?,
                max_blob_len: r.u64()?,
                tokens_per_day: r.u32()?,
            })
        })
    }
}

/// Reads a batch of 1..=[`limits::MAX_TOKEN_BATCH`] points.
fn token_points(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<[u8; 32]>, DecodeError> {
    let n = r.count(field, limits::MAX_TOKEN_BATCH, 32)?;
    if n == 0 {
        return Err(DecodeError::Invalid { field });
    }
    (0..n).map(|_| r.array()).collect()
}

fn put_points(o: &mut Vec<u8>, points: &[[u8; 32]]) {
    o.put_count(points.len());
    for p in points {
        o.put(p);
    }
}

/// `PUT /v1/blobs/tokens` (authenticated): blinded token requests for the current issuer
/// epoch (crypto-core `TokenRequest::blinded`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TokenIssue {
    /// The issuer epoch the tokens are for: the current one.
    pub epoch: u32,
    /// The blinded points, 1..=[`limits::MAX_TOKEN_BATCH`].
    pub blinded: Vec<[u8; 32]>,
}

impl Body for TokenIssue {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u32(self.epoch);
            put_points(o, &self.blinded);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                epoch: r.u32()?,
                blinded: token_points(r, "blinded points")?,
            })
        })
    }
}

/// The answer of `PUT /v1/blobs/tokens`: the evaluated points, in the request's order,
/// and the batch's proof (crypto-core `TokenRequest::finish` takes both).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TokenIssued {
    /// The issuer epoch whose key evaluated them.
    pub epoch: u32,
    /// `Z_i = k·B_i`, 1..=[`limits::MAX_TOKEN_BATCH`].
    pub evaluated: Vec<[u8; 32]>,
    /// The batched DLEQ proof `c ‖ s`.
    pub proof: [u8; 64],
}

impl Body for TokenIssued {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u32(self.epoch);
            put_points(o, &self.evaluated);
            o.put(&self.proof);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                epoch: r.u32()?,
                evaluated: token_points(r, "evaluated points")?,
                proof: r.array()?,
            })
        })
    }
}

/// `PUT /v1/blobs` (unauthenticated): create a blob of `length` bytes, paid for with one
/// upload token. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobCreate {
    /// The issuer epoch the token was issued under (the current or the previous one).
    pub epoch: u32,
    /// The token, `t ‖ N`.
    pub token: [u8; 64],
    /// The blob's length in bytes, at least 1.
    pub length: u64,
}

impl std::fmt::Debug for BlobCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCreate")
            .field("epoch", &self.epoch)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Body for BlobCreate {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u32(self.epoch);
            o.put(&self.token);
            o.put_u64(self.length);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let epoch = r.u32()?;
            let token = r.array()?;
            let length = r.u64()?;
            if length == 0 {
                return Err(DecodeError::Invalid { field: "blob length" });
            }
            Ok(Self { epoch, token, length })
        })
    }
}

/// The answer of `PUT /v1/blobs`: the new blob's id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobCreated {
    /// 32 random bytes; in paths, 64 lowercase hex digits.
    pub id: [u8; 32],
}

impl Body for BlobCreated {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| o.put(&self.id))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| Ok(Self { id: r.array()? }))
    }
}

/// A blob's progress: its length and how many of its bytes the relay holds (durably).
/// `received == length` once it is complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobStatus {
    /// The blob's length in bytes.
    pub length: u64,
    /// The bytes received so far, at most `length`: the offset of the next piece.
    pub received: u64,
}

impl Body for BlobStatus {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| {
            o.put_u64(self.length);
            o.put_u64(self.received);
        })
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            let length = r.u64()?;
            let received = r.u64()?;
            if received > length {
                return Err(DecodeError::Invalid { field: "blob received" });
            }
            Ok(Self { length, received })
        })
    }
}

/// The body of every HTTP error answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
}

impl Body for ErrorBody {
    fn encode(&self) -> Vec<u8> {
        encode_with(|o| o.put_u16(self.code.0))
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |r| {
            Ok(Self {
                code: ErrorCode(r.u16()?),
            })
        })
    }
}

/// The scheme of the HTTP `Authorization` header.
pub const AUTH_SCHEME: &str = "Sotto-v1";

/// The value of the `Authorization` header for an answered challenge:
/// `Sotto-v1 <hex>`.
pub fn authorization_header(response: &AuthResponse) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = response.encode();
    let mut s = String::with_capacity(AUTH_SCHEME.len() + 1 + bytes.len() * 2);
    s.push_str(AUTH_SCHEME);
    s.push(' ');
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Parses an `Authorization` header value made by [`authorization_header`].
pub fn parse_authorization(value: &str) -> Result<AuthResponse, DecodeError> {
    const MAX_HEX: usize = 2 * (1 + AuthResponse::LEN);
    let hex = value
        .strip_prefix(AUTH_SCHEME)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or(DecodeError::Invalid {
            field: "authorization scheme",
        })?
        .trim();
    if hex.len() > MAX_HEX {
        return Err(DecodeError::TooLong {
            field: "authorization",
            len: hex.len(),
            max: MAX_HEX,
        });
    }
    if hex.len() % 2 != 0 {
        return Err(DecodeError::Invalid { field: "authorization" });
    }
    fn nibble(c: u8) -> Result<u8, DecodeError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(DecodeError::Invalid { field: "authorization" }),
        }
    }
    let bytes = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|p| Ok((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect::<Result<Vec<u8>, DecodeError>>()?;
    AuthResponse::decode(&bytes)
}
