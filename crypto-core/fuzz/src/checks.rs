//! The checks behind sotto-crypto's fuzz targets, one function per target.
//!
//! This file is compiled twice: as a module of the cargo-fuzz crate (`crypto-core/fuzz`,
//! whose targets are one-line wrappers around the functions here) and, through
//! `#[path]`, as a module of the corpus replay test `crypto-core/tests/fuzz_corpus.rs`.
//! So it may use only what both crates have: `std`, `sotto_crypto` and `rand_chacha`.
//!
//! Every check feeds untrusted bytes to public API of sotto-crypto. Each call must return
//! `Ok` or a typed error: a panic, inside sotto-crypto or in an assertion here, is a
//! finding. The assertions pin what must hold for *every* input:
//!
//! * decoders are canonical: what decodes re-encodes to the same bytes;
//! * a failed decryption leaves a session unchanged, and a successful one, replayed,
//!   is [`DecryptError::Duplicate`];
//! * whatever verifies was signed by a key of the fixture (no forgery), and a session
//!   built from a bundle that verifies talks to its responder;
//! * in the two-party `interaction`, every delivered message decrypts exactly once to
//!   what was sent, and the skipped-key store holds exactly the keys of the gaps.
//!
//! The fixture (accounts, devices, device lists, prekeys, a bundle and two snapshots of
//! an Alice–Bob session pair) is built once from a seeded [`ChaCha20Rng`], so every run
//! and the committed corpus see the same keys. [`seeds`] builds the seed corpus.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sotto_crypto::device_list::MAX_DEVICES;
use sotto_crypto::ratchet::{Header, MAX_RECEIVING_CHAINS};
use sotto_crypto::{
    AccountId, AccountKey, DecryptError, Device, DeviceId, DeviceList, EncryptError, GroupSealKey, KemPreKey,
    KemPreKeySecret, ListKey, MessageType, OutboundMessage, Pickle, PickleKey, PreKeyBundle, PreKeyMessage, ProfileKey,
    Responded, SenderKey, SenderKeyDistribution, SenderKeyError, SenderKeyReceiver, Session, SignedDeviceList,
    X25519PreKey, X25519PreKeySecret, initiate, open, respond, seal, seal_multi,
};

/// The fuzz targets; each has a directory of seeds under `crypto-core/fuzz/corpus/`.
pub const TARGETS: [&str; 13] = [
    "device_list",
    "prekey_bundle",
    "prekey_records",
    "prekey_message",
    "ratchet_message",
    "sealed_open",
    "pickle",
    "interaction",
    "sender_key",
    "group_seal",
    "profile",
    "attachment",
    "token",
];

/// What a check made of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input got through the deepest call the target makes: it decoded and
    /// verified, decrypted, opened or loaded.
    Accepted,
    /// Some call on the way returned a typed error.
    Rejected,
}

fn outcome(accepted: bool) -> Outcome {
    if accepted { Outcome::Accepted } else { Outcome::Rejected }
}

/// Runs the check of `target` (one of [`TARGETS`]) on `data`; `None` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> Option<Outcome> {
    Some(match target {
        "device_list" => device_list(data),
        "prekey_bundle" => prekey_bundle(data),
        "prekey_records" => prekey_records(data),
        "prekey_message" => prekey_message(data),
        "ratchet_message" => ratchet_message(data),
        "sealed_open" => sealed_open(data),
        "pickle" => pickle(data),
        "interaction" => interaction(data),
        "sender_key" => sender_key(data),
        "group_seal" => group_seal(data),
        "profile" => profile(data),
        "attachment" => attachment(data),
        "token" => token(data),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// The fixture.

const FIXTURE_SEED: u64 = 0x5077_0f22;
/// Seeds the rng of one check run (ephemeral keys, salts): the same input, the same run.
const RUN_SEED: u64 = 0x5077_0f23;
/// Seeds the generator of the seed corpus.
const CORPUS_SEED: u64 = 0x5077_0f24;
/// Seeds the nonce of [`pickle_of`], so that equal states give equal pickles.
const NONCE_SEED: u64 = 0x5077_0f25;
const PICKLE_KEY: [u8; 32] = [0x42; 32];
const CREATED_AT_MS: u64 = 1_700_000_000_000;

/// A message and the plaintext it carries.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The encrypted message.
    pub message: OutboundMessage,
    /// What was encrypted.
    pub plaintext: Vec<u8>,
}

/// Pickles of Alice's and Bob's sessions at one point of the conversation.
pub struct Snapshot {
    /// Alice's session (the initiator).
    pub alice: Vec<u8>,
    /// Bob's session (the responder).
    pub bob: Vec<u8>,
    /// [`pickle_of`] Alice's session: what it pickles to while unchanged.
    pub alice_canonical: Vec<u8>,
    /// [`pickle_of`] Bob's session.
    pub bob_canonical: Vec<u8>,
}

/// Everything the checks run against, built once from [`FIXTURE_SEED`].
///
/// Alice (device 1) fetched Bob's (device 2) bundle, initiated, and sent `first` and
/// `second` (both pre-key messages); Bob responded to `first`. That is the `responded`
/// snapshot. Bob then sent `reply` and Alice decrypted it: the `established` snapshot.
/// `second` is still in flight in both.
pub struct Fixture {
    /// The key every pickle here is encrypted under.
    pub pickle_key: PickleKey,
    /// Alice's account key.
    pub alice_ak: AccountKey,
    /// Alice's device.
    pub alice: Device,
    /// Alice's signed device list (version 1, one device).
    pub alice_list: DeviceList,
    /// Bob's account key.
    pub bob_ak: AccountKey,
    /// Bob's device.
    pub bob: Device,
    /// Bob's signed device list (version 1, one device).
    pub bob_list: DeviceList,
    /// Bob's signed prekey (id 1), the only one his device signed.
    pub spk: X25519PreKeySecret,
    /// Bob's one-time prekey (id 1), the only one.
    pub opk: X25519PreKeySecret,
    /// Bob's one-time ML-KEM prekey (id 1), the only one.
    pub kem: KemPreKeySecret,
    /// Bob's bundle, with the one-time prekey.
    pub bundle: PreKeyBundle,
    /// Alice's first pre-key message; Bob responded to it.
    pub first: Sent,
    /// Alice's second pre-key message, in flight.
    pub second: Sent,
    /// Bob's first message, delivered to Alice in `established`.
    pub reply: Sent,
    /// After Bob responded.
    pub responded: Snapshot,
    /// After Alice decrypted Bob's reply.
    pub established: Snapshot,
}

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(FIXTURE_SEED);
    let pickle_key = PickleKey::new(PICKLE_KEY);
    let alice_ak = AccountKey::generate(&mut rng);
    let alice = Device::generate(alice_ak.account_id(), DeviceId(1), &mut rng);
    let alice_list = alice_ak
        .sign_device_list(1, CREATED_AT_MS, vec![alice.entry()])
        .expect("fixture: Alice's device list");
    let bob_ak = AccountKey::generate(&mut rng);
    let bob = Device::generate(bob_ak.account_id(), DeviceId(2), &mut rng);
    let bob_list = bob_ak
        .sign_device_list(1, CREATED_AT_MS, vec![bob.entry()])
        .expect("fixture: Bob's device list");
    let spk = bob.generate_signed_prekey(1, &mut rng);
    let opk = bob
        .generate_one_time_prekeys(1, 1, &mut rng)
        .pop()
        .expect("fixture: one one-time prekey");
    let kem = bob.generate_kem_prekey(1, false, &mut rng);
    let bundle = PreKeyBundle {
        identity: bob.identity(),
        signed_prekey: spk.public().clone(),
        one_time_prekey: Some(opk.public().clone()),
        kem_prekey: kem.public().clone(),
    };

    let mut alice_session = initiate(&alice, &bob_list, &bundle, &mut rng).expect("fixture: initiate");
    let first = send(&mut alice_session, b"first", &mut rng);
    let second = send(&mut alice_session, b"second", &mut rng);
    let msg = PreKeyMessage::decode(&first.message.bytes).expect("fixture: pre-key message");
    let Responded {
        session: mut bob_session,
        plaintext,
        ..
    } = respond(&bob, &alice_list, &msg, &spk, Some(&opk), &kem).expect("fixture: respond");
    assert_eq!(plaintext, first.plaintext);
    let responded = snapshot(&alice_session, &bob_session, &pickle_key, &mut rng);

    let reply = send(&mut bob_session, b"reply", &mut rng);
    let got = alice_session
        .decrypt(reply.message.message_type, &reply.message.bytes)
        .expect("fixture: Alice decrypts the reply");
    assert_eq!(got, reply.plaintext);
    let established = snapshot(&alice_session, &bob_session, &pickle_key, &mut rng);

    Fixture {
        pickle_key,
        alice_ak,
        alice,
        alice_list,
        bob_ak,
        bob,
        bob_list,
        spk,
        opk,
        kem,
        bundle,
        first,
        second,
        reply,
        responded,
        established,
    }
}

fn snapshot(alice: &Session, bob: &Session, key: &PickleKey, rng: &mut ChaCha20Rng) -> Snapshot {
    Snapshot {
        alice: alice.pickle(key, rng),
        bob: bob.pickle(key, rng),
        alice_canonical: alice.pickle(key, &mut ChaCha20Rng::seed_from_u64(NONCE_SEED)),
        bob_canonical: bob.pickle(key, &mut ChaCha20Rng::seed_from_u64(NONCE_SEED)),
    }
}

fn send(session: &mut Session, plaintext: &[u8], rng: &mut ChaCha20Rng) -> Sent {
    let message = session.encrypt(plaintext, rng).expect("encrypt on a live session");
    Sent {
        message,
        plaintext: plaintext.to_vec(),
    }
}

/// A session from one of the fixture's pickles.
fn restore(pickle: &[u8]) -> Session {
    Session::unpickle(pickle, &fixture().pickle_key).expect("the fixture's pickles load")
}

/// Pickles under the fixture key with a fixed nonce: equal states give equal bytes.
pub fn pickle_of<T: Pickle>(value: &T) -> Vec<u8> {
    value.pickle(&fixture().pickle_key, &mut ChaCha20Rng::seed_from_u64(NONCE_SEED))
}

fn run_rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(RUN_SEED)
}

/// The ratchet header inside a message of either type.
fn header_of(message_type: MessageType, bytes: &[u8]) -> Option<Header> {
    let ratchet = match message_type {
        MessageType::Ratchet => bytes,
        MessageType::PreKey => PreKeyMessage::decode(bytes).ok()?.message,
    };
    Header::parse(ratchet).ok().map(|(header, _)| header)
}

// ---------------------------------------------------------------------------------------
// Decoder targets.

/// `device_list`: [`SignedDeviceList::from_bytes`], then `verify` against Alice's and
/// Bob's account ids and against the id of the embedded account key, and
/// `account_key_and_version`.
pub fn device_list(data: &[u8]) -> Outcome {
    let f = fixture();
    let Ok(signed) = SignedDeviceList::from_bytes(data) else {
        return Outcome::Rejected;
    };
    assert_eq!(signed.as_bytes(), data);
    let header = signed.account_key_and_version();
    let mut accepted = false;
    for id in [f.alice_ak.account_id(), f.bob_ak.account_id()] {
        if let Ok(list) = signed.verify(&id) {
            check_verified_list(f, &list, data, &id);
            accepted = true;
        }
    }
    if let Ok((account_key, version)) = header {
        let id = AccountId::from_account_key(&account_key);
        if let Ok(list) = signed.verify(&id) {
            assert_eq!(list.account_key(), account_key);
            assert_eq!(list.version(), version);
            check_verified_list(f, &list, data, &id);
            accepted = true;
        }
    }
    if accepted {
        assert!(header.is_ok(), "a list that verifies has a readable header");
    }
    outcome(accepted)
}

fn check_verified_list(f: &Fixture, list: &DeviceList, data: &[u8], id: &AccountId) {
    assert_eq!(list.account_id(), *id);
    assert_eq!(AccountId::from_account_key(&list.account_key()), *id);
    assert_eq!(list.signed().as_bytes(), data);
    let devices = list.devices();
    assert!((1..=MAX_DEVICES).contains(&devices.len()));
    assert!(
        devices.windows(2).all(|w| w[0].device_id < w[1].device_id),
        "device ids strictly ascending"
    );
    for d in devices {
        let identity = list.identity(d.device_id).expect("a listed device has an identity");
        assert!(list.contains(&identity));
    }
    let same = list.check_update(list).expect("a list may replace itself");
    assert!(same.is_empty());
    for pinned in [&f.alice_list, &f.bob_list] {
        let _ = pinned.check_update(list);
        let _ = list.check_update(pinned);
    }
}

/// `prekey_bundle`: [`PreKeyBundle::decode`]; on `Ok`, re-encoding gives the input back,
/// `verify` runs, and Alice `initiate`s with it. A bundle Alice accepts can only be Bob's
/// (nothing else is in his device list, and his device signed one key per slot), so Bob
/// must then respond to her first message.
pub fn prekey_bundle(data: &[u8]) -> Outcome {
    let f = fixture();
    let Ok(bundle) = PreKeyBundle::decode(data) else {
        return Outcome::Rejected;
    };
    assert_eq!(bundle.encode(), data, "PreKeyBundle encoding is canonical");
    let verified = bundle.verify();
    let mut rng = run_rng();
    let Ok(mut session) = initiate(&f.alice, &f.bob_list, &bundle, &mut rng) else {
        return Outcome::Rejected;
    };
    assert!(verified.is_ok(), "initiate took a bundle that does not verify");
    assert_eq!(bundle.identity, f.bob.identity());
    let sent = send(&mut session, b"bundle check", &mut rng);
    assert_eq!(sent.message.message_type, MessageType::PreKey);
    let msg = PreKeyMessage::decode(&sent.message.bytes).expect("initiate's message decodes");
    let opk = msg.one_time_prekey_id.map(|_| &f.opk);
    let responded = respond(&f.bob, &f.alice_list, &msg, &f.spk, opk, &f.kem)
        .expect("Bob responds to a session made from his own bundle");
    assert_eq!(responded.plaintext, sent.plaintext);
    Outcome::Accepted
}

/// `prekey_records`: [`X25519PreKey::decode`] and [`KemPreKey::decode`]; what decodes
/// re-encodes to the input, and what verifies under Bob's signing key is one of his.
pub fn prekey_records(data: &[u8]) -> Outcome {
    let f = fixture();
    let bob = f.bob.identity();
    let mut accepted = false;
    if let Ok(key) = X25519PreKey::decode(data) {
        let mut out = Vec::new();
        key.encode_into(&mut out);
        assert_eq!(out, data, "X25519PreKey encoding is canonical");
        assert_eq!(data.len(), X25519PreKey::ENCODED_LEN);
        if key.verify(bob.device_id, &bob.signing_key).is_ok() {
            assert!(key == *f.spk.public() || key == *f.opk.public());
            accepted = true;
        }
    }
    if let Ok(key) = KemPreKey::decode(data) {
        let mut out = Vec::new();
        key.encode_into(&mut out);
        assert_eq!(out, data, "KemPreKey encoding is canonical");
        assert_eq!(data.len(), KemPreKey::ENCODED_LEN);
        if key.verify(bob.device_id, &bob.signing_key).is_ok() {
            assert_eq!(key, *f.kem.public());
            accepted = true;
        }
    }
    outcome(accepted)
}

/// `prekey_message`: [`PreKeyMessage::decode`], then Bob `respond`s with his fixed
/// prekey secrets. A new session can reply, and the same message replayed into it is a
/// duplicate.
pub fn prekey_message(data: &[u8]) -> Outcome {
    let f = fixture();
    let Ok(msg) = PreKeyMessage::decode(data) else {
        return Outcome::Rejected;
    };
    assert_eq!([msg.prefix, msg.message].concat(), data);
    assert!(Header::parse(msg.message).is_ok());
    let opk = msg.one_time_prekey_id.map(|_| &f.opk);
    let Ok(responded) = respond(&f.bob, &f.alice_list, &msg, &f.spk, opk, &f.kem) else {
        return Outcome::Rejected;
    };
    assert_eq!(responded.session.remote(), &msg.initiator);
    assert_eq!(responded.session.base_key(), &msg.base_key);
    assert_eq!(responded.used.signed_prekey_id, msg.signed_prekey_id);
    assert_eq!(responded.used.one_time_prekey_id, msg.one_time_prekey_id);
    assert_eq!(responded.used.kem_prekey, msg.kem_prekey);
    let mut session = responded.session;
    let index = header_of(MessageType::PreKey, data).map(|h| h.index);
    assert_eq!(
        session.decrypt(MessageType::PreKey, data).err(),
        index.map(|index| DecryptError::Duplicate { index }),
        "a pre-key message replayed into the session it made"
    );
    match session.encrypt(b"reply", &mut run_rng()) {
        Ok(reply) => assert_eq!(reply.message_type, MessageType::Ratchet),
        // Only an initiator that chose a small-order ratchet key gets here.
        Err(EncryptError::NonContributory) => {}
        Err(e) => panic!("the responder cannot reply: {e:?}"),
    }
    Outcome::Accepted
}

/// A sender-key chain and its first three messages (fixed draws).
struct SenderFixture {
    distribution: SenderKeyDistribution,
    messages: Vec<Vec<u8>>,
}

fn sender_fixture() -> &'static SenderFixture {
    static FIXTURE: OnceLock<SenderFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(FIXTURE_SEED); // test only
        let mut sender = SenderKey::generate(&mut rng);
        let distribution = sender.distribution();
        let messages = (0..3u8)
            .map(|i| sender.encrypt(&[i; 8], &mut rng).expect("a small message encrypts"))
            .collect();
        SenderFixture { distribution, messages }
    })
}

/// `sender_key`: the input as a distribution (decoded, it re-encodes to itself) and as a
/// message to a receiver of the fixture's chain that already read message 1 (so it holds
/// the key of message 0). A failure leaves the receiver as it was; a success replayed is
/// a duplicate.
pub fn sender_key(data: &[u8]) -> Outcome {
    let f = sender_fixture();
    let mut accepted = false;
    if let Ok(d) = SenderKeyDistribution::decode(data) {
        assert_eq!(d.encode().as_slice(), data, "a distribution re-encodes to itself");
        accepted = true;
    }
    let mut receiver = SenderKeyReceiver::new(&f.distribution);
    receiver
        .decrypt(&f.messages[1])
        .expect("the fixture's own message decrypts");
    let before = (receiver.iteration(), receiver.skipped_keys());
    match receiver.decrypt(data) {
        Ok(_) => {
            accepted = true;
            let again = receiver.decrypt(data);
            assert!(
                matches!(again, Err(SenderKeyError::Duplicate { .. })),
                "a replayed sender-key message: {again:?}"
            );
        }
        Err(_) => assert_eq!(
            (receiver.iteration(), receiver.skipped_keys()),
            before,
            "a failed sender-key decryption changed the receiver"
        ),
    }
    outcome(accepted)
}

/// The group key of the `group_seal` fixture.
fn group_key() -> GroupSealKey {
    GroupSealKey::from_bytes(&[0x47; 32])
}

/// `group_seal`: the input opened under the fixture's group key. Whatever opens matched
/// the key's hint, carries at most the largest content, and seals again to an envelope
/// that opens to the same content; whatever does not match the hint does not open.
pub fn group_seal(data: &[u8]) -> Outcome {
    let gk = group_key();
    let matched = gk.matches(data);
    match gk.open(data) {
        Ok(opened) => {
            assert!(matched, "an envelope opened without matching the hint");
            assert!(opened.content.len() <= sotto_crypto::group_seal::MAX_CONTENT_LEN);
            let mut rng = ChaCha20Rng::seed_from_u64(RUN_SEED);
            let again = gk
                .seal(opened.content_type, &opened.content, &mut rng)
                .expect("opened content seals again");
            assert_eq!(gk.open(&again).expect("a fresh seal opens"), opened);
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// The profile key and account of the `profile` fixture.
fn profile_key() -> (ProfileKey, AccountId) {
    (ProfileKey::from_bytes(&[0x50; 32]), AccountId([0x51; 32]))
}

/// `profile`: the input decrypted as the fixture account's profile under the fixture's
/// key. Whatever decrypts is at most the largest plaintext, and encrypts again to a
/// ciphertext that decrypts to the same bytes.
pub fn profile(data: &[u8]) -> Outcome {
    let (key, account) = profile_key();
    match key.decrypt(&account, data) {
        Ok(plain) => {
            assert!(plain.len() <= sotto_crypto::profile::MAX_PLAINTEXT_LEN);
            assert!(data.len() <= sotto_crypto::profile::MAX_CIPHERTEXT_LEN);
            let mut rng = ChaCha20Rng::seed_from_u64(RUN_SEED);
            let again = key
                .encrypt(&account, &plain, &mut rng)
                .expect("a decrypted profile encrypts again");
            assert_eq!(key.decrypt(&account, &again).expect("a fresh profile decrypts"), plain);
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// The key of the `attachment` fixture.
fn attachment_key() -> sotto_crypto::AttachmentKey {
    sotto_crypto::AttachmentKey::from_bytes(&[0x41; 32])
}

/// An `attachment` input: plaintext length (u16) ‖ piece size / 64 (u8) ‖ digest (32) ‖
/// ciphertext.
fn attachment_input(len: u16, step: u8, digest: &[u8; 32], ct: &[u8]) -> Vec<u8> {
    [&len.to_be_bytes()[..], &[step], digest, ct].concat()
}

/// `attachment`: the input decrypted as a stream (in pieces of the size it names) under
/// the fixture's key, for the plaintext length and digest it names. Whatever decrypts
/// is exactly that long, and encrypts again to a ciphertext that decrypts to the same.
pub fn attachment(data: &[u8]) -> Outcome {
    use sotto_crypto::attachment::{Decryptor, Encryptor};
    if data.len() < 35 {
        return Outcome::Rejected;
    }
    let len = u64::from(u16::from_be_bytes([data[0], data[1]]));
    let step = usize::from(data[2]).max(1) * 64;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&data[3..35]);
    let key = attachment_key();
    let run = |digest: [u8; 32], ct: &[u8]| -> Option<Vec<u8>> {
        let mut d = Decryptor::new(&key, len, digest).ok()?;
        let mut out = Vec::new();
        for piece in ct.chunks(step) {
            d.update(piece, &mut out).ok()?;
        }
        d.finish().ok()?;
        Some(out)
    };
    let Some(plain) = run(digest, &data[35..]) else {
        return Outcome::Rejected;
    };
    assert_eq!(plain.len() as u64, len, "a decrypted attachment has another length");
    let mut rng = ChaCha20Rng::seed_from_u64(RUN_SEED);
    let mut e = Encryptor::new(&key, len, &mut rng).expect("an attachment that decrypted encrypts again");
    let mut again = e.header().to_vec();
    e.update(&plain, &mut again).expect("its plaintext");
    let digest = e.finish(&mut again).expect("its padding");
    assert_eq!(
        run(digest, &again).as_deref(),
        Some(&plain[..]),
        "a fresh attachment decrypts"
    );
    Outcome::Accepted
}

/// The issuer of the `token` fixture.
fn token_issuer() -> sotto_crypto::IssuerKey {
    sotto_crypto::IssuerKey::generate(&mut ChaCha20Rng::seed_from_u64(FIXTURE_SEED))
}

/// `token`: 64 bytes are a token redeemed at the fixture's issuer; any other input is a
/// batch of 32-byte blinded points it is asked to answer. A token that verifies was
/// issued (the seeds hold real ones); for a batch it answers, an honest request of the
/// same count made by this check finishes against its answer and every token verifies.
pub fn token(data: &[u8]) -> Outcome {
    let issuer = token_issuer();
    if let Ok(t) = <[u8; 64]>::try_from(data) {
        return outcome(issuer.verify(&t).is_ok());
    }
    let blinded: Vec<[u8; 32]> = data.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(RUN_SEED);
    match issuer.issue(&blinded, &mut rng) {
        Ok((evaluated, _)) => {
            assert_eq!(evaluated.len(), blinded.len());
            let req = sotto_crypto::TokenRequest::new(blinded.len(), &mut rng).expect("a count that was issued");
            let (evaluated, proof) = issuer.issue(req.blinded(), &mut rng).expect("fresh blinded points");
            let tokens = req
                .finish(&issuer.public(), &evaluated, &proof)
                .expect("an honest issuance verifies");
            assert!(tokens.iter().all(|t| issuer.verify(t).is_ok()));
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// `ratchet_message`: Bob's and Alice's `established` sessions decrypt the input as a
/// ratchet message and as a pre-key message, each on a fresh copy (unpickled). A failure
/// leaves the session as it was; a success replayed is a duplicate.
pub fn ratchet_message(data: &[u8]) -> Outcome {
    let f = fixture();
    let s = &f.established;
    let mut accepted = false;
    for (pickle, canonical) in [(&s.bob, &s.bob_canonical), (&s.alice, &s.alice_canonical)] {
        for message_type in [MessageType::Ratchet, MessageType::PreKey] {
            let mut session = restore(pickle);
            match session.decrypt(message_type, data) {
                Ok(_) => {
                    accepted = true;
                    let index = header_of(message_type, data)
                        .expect("a message that decrypted has a header")
                        .index;
                    assert_eq!(
                        session.decrypt(message_type, data),
                        Err(DecryptError::Duplicate { index }),
                        "a replayed {message_type:?} message"
                    );
                }
                Err(_) => assert!(
                    pickle_of(&session) == *canonical,
                    "a failed {message_type:?} decryption changed the session"
                ),
            }
        }
    }
    outcome(accepted)
}

/// `sealed_open`: [`open`] with Bob's device.
pub fn sealed_open(data: &[u8]) -> Outcome {
    let f = fixture();
    match open(&f.bob, data) {
        Ok(opened) => {
            let again = open(&f.bob, data).expect("opening is deterministic");
            assert_eq!(again, opened);
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// `pickle`: the input unpickled as each of the five types under the fixture key; then,
/// when its first byte is a type number (1 account key, 2 device, 3 session, 4 X25519
/// prekey secret, 5 ML-KEM prekey secret), the rest is sealed as that type's *inner*
/// plaintext (`format ‖ fields`) with the fixture key and unpickled, so the fuzzer
/// reaches the field decoders behind the AEAD. What loads re-pickles stably, decodes and
/// re-encodes to the same fields, and is exercised a little.
pub fn pickle(data: &[u8]) -> Outcome {
    let mut accepted = false;
    for ty in 1..=8 {
        accepted |= unpickle_as(ty, data, None);
    }
    if let Some((&ty, inner)) = data.split_first()
        && (1..=8).contains(&ty)
    {
        let sealed = pickle_wrap::seal(ty, inner, &[7; 24]);
        accepted |= unpickle_as(ty, &sealed, Some(inner));
    }
    outcome(accepted)
}

fn unpickle_as(ty: u8, bytes: &[u8], inner: Option<&[u8]>) -> bool {
    match ty {
        1 => load::<AccountKey>(bytes, inner, |ak| {
            let list = ak
                .sign_device_list(1, 0, vec![fixture().alice.entry()])
                .expect("any account key signs a device list");
            list.signed().verify(&ak.account_id()).expect("and the list verifies");
        }),
        2 => load::<Device>(bytes, inner, |device| {
            let mut rng = run_rng();
            let ik = device.identity();
            let sealed = seal(&fixture().alice, &ik, 1, b"to a loaded device", &mut rng)
                .expect("any device identity key can be sealed to");
            let opened = open(&device, &sealed).expect("and the device opens it");
            assert_eq!(opened.content, b"to a loaded device");
            let spk = device.generate_signed_prekey(9, &mut rng);
            let identity = device.identity();
            spk.public()
                .verify(identity.device_id, &identity.signing_key)
                .expect("a loaded device signs prekeys");
        }),
        3 => load::<Session>(bytes, inner, |mut session| {
            let f = fixture();
            let _ = session.encrypt(b"from a loaded session", &mut run_rng());
            let _ = session.decrypt(MessageType::Ratchet, &f.reply.message.bytes);
            let _ = session.decrypt(MessageType::PreKey, &f.second.message.bytes);
        }),
        4 => load::<X25519PreKeySecret>(bytes, inner, |k| {
            let _ = k.public();
        }),
        5 => load::<KemPreKeySecret>(bytes, inner, |k| {
            let _ = k.public();
        }),
        6 => load::<ListKey>(bytes, inner, |k| {
            let list = k
                .sign_device_list(1, 0, vec![fixture().alice.entry()], &[])
                .expect("any list key signs a device list");
            // Only Alice's own list key makes a list her account id accepts.
            let _ = list.signed().verify(&fixture().alice_ak.account_id());
            assert_eq!(list.epoch(), k.epoch());
        }),
        7 => load::<SenderKey>(bytes, inner, |mut k| {
            let mut rng = run_rng();
            let _ = k.encrypt(b"from a loaded sender key", &mut rng);
        }),
        8 => load::<SenderKeyReceiver>(bytes, inner, |mut r| {
            let before = (r.iteration(), r.skipped_keys());
            if r.decrypt(&sender_fixture().messages[0]).is_err() {
                assert_eq!((r.iteration(), r.skipped_keys()), before);
            }
        }),
        _ => false,
    }
}

fn load<T: Pickle>(bytes: &[u8], inner: Option<&[u8]>, exercise: impl FnOnce(T)) -> bool {
    let Ok(value) = T::unpickle(bytes, &fixture().pickle_key) else {
        return false;
    };
    let again = pickle_of(&value);
    let reloaded = T::unpickle(&again, &fixture().pickle_key).expect("a fresh pickle loads");
    assert!(pickle_of(&reloaded) == again, "pickling is stable");
    if let Some(inner) = inner {
        let repickled = pickle_wrap::open(&again).expect("a fresh pickle opens");
        // A pickle of an older format is rewritten in the current one; compare like with like.
        if repickled.get(..2) == inner.get(..2) {
            assert!(
                repickled == inner,
                "decoding then encoding pickle fields is the identity"
            );
        }
    }
    exercise(value);
    true
}

// ---------------------------------------------------------------------------------------
// The two-party interaction.

const ALICE: usize = 0;
const BOB: usize = 1;
/// Operations read from one input, at most.
pub const MAX_OPS: usize = 200;
/// Messages in flight at once, at most; a send beyond it is skipped. With at most
/// [`MAX_OPS`] messages a gap never nears `MAX_SKIP` or `MAX_SKIPPED_KEYS` (2000).
pub const MAX_IN_FLIGHT: usize = 64;
const MAX_DELIVERED: usize = 64;

/// Interaction opcodes: the low three bits of an operation byte; the high five are its
/// argument `arg`.
pub mod op {
    /// Alice encrypts a message (`4 * arg` bytes of padding) and puts it in flight.
    pub const ALICE_SENDS: u8 = 0;
    /// Bob encrypts a message and puts it in flight.
    pub const BOB_SENDS: u8 = 1;
    /// Deliver in-flight message `arg % len`.
    pub const DELIVER: u8 = 2;
    /// Deliver the oldest in-flight message.
    pub const DELIVER_OLDEST: u8 = 3;
    /// Drop in-flight message `arg % len`.
    pub const DROP: u8 = 4;
    /// Deliver again delivered message `arg % len` (of the last 64).
    pub const REPLAY: u8 = 5;
    /// Pickle and unpickle Alice (`arg` even) or Bob (`arg` odd).
    pub const RESTORE: u8 = 6;
    /// Deliver the newest in-flight message.
    pub const DELIVER_NEWEST: u8 = 7;

    /// One operation byte.
    pub const fn byte(code: u8, arg: u8) -> u8 {
        code | (arg << 3)
    }
}

#[derive(Clone)]
struct InFlight {
    to: usize,
    sent: Sent,
    ratchet_key: [u8; 32],
    index: u32,
    /// The sender's previous chain length, from the header.
    pn: u32,
}

impl InFlight {
    fn new(to: usize, sent: Sent) -> Self {
        let header =
            header_of(sent.message.message_type, &sent.message.bytes).expect("an encrypted message has a header");
        Self {
            to,
            sent,
            ratchet_key: header.ratchet_key.0,
            index: header.index,
            pn: header.previous_chain_length,
        }
    }
}

/// What a receiving session must hold, modelled from what it was given.
#[derive(Default)]
struct Model {
    /// Sender ratchet keys, in the order the session made receiving chains for them.
    chains: Vec<[u8; 32]>,
    /// Per chain: one past the highest index received, or the sender's previous chain
    /// length `pn` when a message on its next chain arrived (the keys below it are
    /// derived then and kept as skipped keys).
    positions: HashMap<[u8; 32], u32>,
    /// Every (chain, index) decrypted.
    received: HashSet<([u8; 32], u32)>,
}

impl Model {
    /// The session still has this receiving chain (it keeps the newest few).
    fn kept(&self, key: &[u8; 32]) -> bool {
        self.chains.iter().rev().take(MAX_RECEIVING_CHAINS).any(|k| k == key)
    }

    /// Whether a message not yet received must decrypt: on a new or kept chain always;
    /// on an evicted chain only from a key stored as skipped (below the position).
    fn must_decrypt(&self, key: &[u8; 32], index: u32) -> bool {
        match self.positions.get(key) {
            None => true,
            Some(&pos) => self.kept(key) || index < pos,
        }
    }

    fn record(&mut self, m: &InFlight) {
        if !self.positions.contains_key(&m.ratchet_key) {
            // A new chain: the sender's previous one is our newest, derived up to `pn`.
            if let Some(prev) = self.chains.last().and_then(|k| self.positions.get_mut(k)) {
                *prev = (*prev).max(m.pn);
            }
            self.chains.push(m.ratchet_key);
        }
        let pos = self.positions.entry(m.ratchet_key).or_insert(0);
        *pos = (*pos).max(m.index + 1);
        self.received.insert((m.ratchet_key, m.index));
    }

    /// The skipped keys the session must store: every index below a chain's position
    /// that was not received.
    fn skipped(&self) -> usize {
        let received: usize = self.received.len();
        let below: usize = self.positions.values().map(|&p| p as usize).sum();
        below - received
    }
}

struct Party {
    session: Session,
    model: Model,
}

const NAMES: [&str; 2] = ["Alice", "Bob"];

fn deliver(parties: &mut [Party; 2], m: InFlight, delivered: &mut Vec<InFlight>) {
    let party = &mut parties[m.to];
    let must = party.model.must_decrypt(&m.ratchet_key, m.index);
    let got = party
        .session
        .decrypt(m.sent.message.message_type, &m.sent.message.bytes);
    if must {
        match got {
            Ok(plaintext) => assert!(
                plaintext == m.sent.plaintext,
                "{} got another plaintext for message {} of a chain",
                NAMES[m.to],
                m.index
            ),
            Err(e) => panic!(
                "{} could not decrypt message {} of a chain: {e:?}",
                NAMES[m.to], m.index
            ),
        }
        party.model.record(&m);
        delivered.push(m);
        if delivered.len() > MAX_DELIVERED {
            delivered.remove(0);
        }
    } else {
        // Its receiving chain was evicted and its key never skipped: lost for good.
        assert!(got.is_err(), "a message on an evicted chain decrypted");
    }
}

fn replay(parties: &mut [Party; 2], m: &InFlight) {
    let party = &mut parties[m.to];
    let got = party
        .session
        .decrypt(m.sent.message.message_type, &m.sent.message.bytes);
    if party.model.kept(&m.ratchet_key) {
        assert_eq!(
            got,
            Err(DecryptError::Duplicate { index: m.index }),
            "a message delivered twice to {}",
            NAMES[m.to]
        );
    } else {
        // The chain is gone, so the session cannot tell a replay from a stranger.
        assert!(got.is_err(), "a replay on an evicted chain decrypted");
    }
}

fn plaintext(from: usize, seq: u32, arg: usize) -> Vec<u8> {
    let mut p = vec![from as u8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(5 + 4 * arg, seq as u8);
    p
}

/// `interaction`: the input is a schedule. Byte 0 picks the start (even: `established`,
/// odd: `responded`, where Alice still sends pre-key messages) and seeds the rng; each
/// further byte is one operation ([`op`]), at most [`MAX_OPS`]. At the end everything
/// still in flight is delivered, oldest first. Throughout: each delivered message
/// decrypts exactly once to what was sent, a re-delivery is
/// [`DecryptError::Duplicate`] (while its chain is kept), a restored session pickles as
/// before, and each side stores exactly the skipped keys of the gaps it saw.
pub fn interaction(data: &[u8]) -> Outcome {
    let f = fixture();
    let Some((&start, ops)) = data.split_first() else {
        return Outcome::Rejected;
    };
    let established = start & 1 == 0;
    let snapshot = if established { &f.established } else { &f.responded };
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(start));
    let mut parties = [
        Party {
            session: restore(&snapshot.alice),
            model: Model::default(),
        },
        Party {
            session: restore(&snapshot.bob),
            model: Model::default(),
        },
    ];
    // What the snapshot has delivered already, and what is in flight.
    let mut delivered = Vec::new();
    let mut in_flight = vec![InFlight::new(BOB, f.second.clone())];
    let first = InFlight::new(BOB, f.first.clone());
    parties[BOB].model.record(&first);
    delivered.push(first);
    if established {
        let reply = InFlight::new(ALICE, f.reply.clone());
        parties[ALICE].model.record(&reply);
        delivered.push(reply);
    }

    let mut seq = 0u32;
    for &byte in ops.iter().take(MAX_OPS) {
        let arg = usize::from(byte >> 3);
        match byte & 7 {
            op::ALICE_SENDS | op::BOB_SENDS => {
                let from = usize::from(byte & 1);
                if in_flight.len() < MAX_IN_FLIGHT {
                    seq += 1;
                    let sent = send(&mut parties[from].session, &plaintext(from, seq, arg), &mut rng);
                    in_flight.push(InFlight::new(1 - from, sent));
                }
            }
            op::DELIVER | op::DELIVER_OLDEST | op::DELIVER_NEWEST if !in_flight.is_empty() => {
                let i = match byte & 7 {
                    op::DELIVER => arg % in_flight.len(),
                    op::DELIVER_OLDEST => 0,
                    _ => in_flight.len() - 1,
                };
                let m = in_flight.remove(i);
                deliver(&mut parties, m, &mut delivered);
            }
            op::DROP if !in_flight.is_empty() => {
                in_flight.remove(arg % in_flight.len());
            }
            op::REPLAY if !delivered.is_empty() => {
                let m = delivered[arg % delivered.len()].clone();
                replay(&mut parties, &m);
            }
            op::RESTORE => {
                let party = &mut parties[arg & 1];
                let pickled = pickle_of(&party.session);
                let session = Session::unpickle(&pickled, &f.pickle_key).expect("a fresh pickle loads");
                assert!(pickle_of(&session) == pickled, "a restored session pickles as before");
                party.session = session;
            }
            _ => {}
        }
    }
    for m in std::mem::take(&mut in_flight) {
        deliver(&mut parties, m, &mut delivered);
    }
    for (name, party) in NAMES.iter().zip(&parties) {
        assert_eq!(
            party.session.skipped_key_count(),
            party.model.skipped(),
            "{name}'s skipped keys"
        );
    }
    Outcome::Accepted
}

// ---------------------------------------------------------------------------------------
// The seed corpus.

/// One seed file.
pub struct Seed {
    /// The target directory.
    pub target: &'static str,
    /// The file name: `ok-*` seeds must be [`Outcome::Accepted`], `bad-*` ones need not be.
    pub name: String,
    /// The contents.
    pub bytes: Vec<u8>,
}

/// The seed corpus, deterministically: valid encodings made by sotto-crypto from the
/// fixture, and truncated or altered copies of them.
pub fn seeds() -> Vec<Seed> {
    let f = fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(CORPUS_SEED);
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        });
    };
    let flip = |bytes: &[u8], i: usize| {
        let mut b = bytes.to_vec();
        let i = i.min(b.len() - 1);
        b[i] ^= 0x01;
        b
    };
    let set = |bytes: &[u8], i: usize, v: u8| {
        let mut b = bytes.to_vec();
        b[i] = v;
        b
    };
    let cut = |bytes: &[u8], n: usize| bytes[..n.min(bytes.len())].to_vec();

    // device_list
    let alice_list = f.alice_list.signed().as_bytes();
    let extra_ak = AccountKey::generate(&mut rng);
    let extra_devices = (1..=3)
        .map(|i| Device::generate(extra_ak.account_id(), DeviceId(i * 10), &mut rng).entry())
        .collect();
    let three = extra_ak
        .sign_device_list(7, CREATED_AT_MS, extra_devices)
        .expect("a three-device list");
    add("device_list", "ok-alice", alice_list.to_vec());
    add("device_list", "ok-bob", f.bob_list.signed().as_bytes().to_vec());
    add("device_list", "ok-three-devices", three.signed().as_bytes().to_vec());
    add("device_list", "bad-truncated", cut(alice_list, alice_list.len() - 1));
    add("device_list", "bad-signature", flip(alice_list, alice_list.len() - 1));
    add("device_list", "bad-version", set(alice_list, 0, 1));
    let foreign = extra_ak
        .sign_device_list(8, CREATED_AT_MS, vec![f.alice.entry()])
        .expect("an account key signs any entry");
    add("device_list", "bad-foreign-entry", foreign.signed().as_bytes().to_vec());
    add("device_list", "bad-count", set(alice_list, 1 + 32 + 104 + 8 + 8 + 1, 2));
    add(
        "device_list",
        "bad-flags",
        set(alice_list, 1 + 32 + 104 + 8 + 8 + 2 + 4, 2),
    );
    let holders = extra_ak
        .list_key(3)
        .expect("epoch 3")
        .sign_device_list(
            9,
            CREATED_AT_MS,
            three.devices().to_vec(),
            &[DeviceId(10), DeviceId(30)],
        )
        .expect("a list with list-key holders");
    add("device_list", "ok-holders", holders.signed().as_bytes().to_vec());

    // prekey_bundle
    let bundle = f.bundle.encode();
    let no_opk = PreKeyBundle {
        one_time_prekey: None,
        ..f.bundle.clone()
    };
    let opk_flag = 1 + 100 + X25519PreKey::ENCODED_LEN;
    add("prekey_bundle", "ok-with-one-time", bundle.clone());
    add("prekey_bundle", "ok-without-one-time", no_opk.encode());
    add("prekey_bundle", "bad-truncated", cut(&bundle, bundle.len() - 1));
    add("prekey_bundle", "bad-flag", set(&bundle, opk_flag, 2));
    add("prekey_bundle", "bad-kem-signature", flip(&bundle, bundle.len() - 1));
    add("prekey_bundle", "bad-trailing", [&bundle[..], &[0]].concat());

    // prekey_records
    let mut spk = Vec::new();
    f.spk.public().encode_into(&mut spk);
    let mut opk = Vec::new();
    f.opk.public().encode_into(&mut opk);
    let mut kem = Vec::new();
    f.kem.public().encode_into(&mut kem);
    add("prekey_records", "ok-signed", spk.clone());
    add("prekey_records", "ok-one-time", opk);
    add("prekey_records", "ok-kem", kem.clone());
    add("prekey_records", "bad-kind", set(&spk, 0, 3));
    add("prekey_records", "bad-signature", flip(&spk, 10));
    add("prekey_records", "bad-short", cut(&kem, 600));
    let mut bad_kem = kem.clone();
    bad_kem[5..5 + 1184].fill(0xff);
    add("prekey_records", "bad-kem-key", bad_kem);

    // prekey_message
    let first = &f.first.message.bytes;
    let mut no_opk_session =
        initiate(&f.alice, &f.bob_list, &no_opk, &mut rng).expect("initiate without a one-time prekey");
    let no_opk_msg = send(&mut no_opk_session, b"no one-time prekey", &mut rng);
    let flag = 1 + 100 + 4;
    add("prekey_message", "ok-with-one-time", first.clone());
    add("prekey_message", "ok-without-one-time", no_opk_msg.message.bytes);
    add("prekey_message", "bad-truncated", cut(first, 200));
    add("prekey_message", "bad-flag", set(first, flag, 7));
    add("prekey_message", "bad-kem-kind", set(first, flag + 5, 5));
    add("prekey_message", "bad-tag", flip(first, first.len() - 1));

    // ratchet_message
    let mut alice = restore(&f.established.alice);
    let a1 = send(&mut alice, b"a new chain", &mut rng).message.bytes;
    let a2 = send(&mut alice, b"skipping one", &mut rng).message.bytes;
    let mut bob = restore(&f.established.bob);
    let b1 = send(&mut bob, b"same chain", &mut rng).message.bytes;
    let mut far = a1.clone();
    far[37..41].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    add("ratchet_message", "ok-new-chain", a1.clone());
    add("ratchet_message", "ok-skip", a2);
    add("ratchet_message", "ok-same-chain", b1);
    add("ratchet_message", "ok-prekey", f.second.message.bytes.clone());
    add("ratchet_message", "bad-replay", f.reply.message.bytes.clone());
    add("ratchet_message", "bad-truncated", cut(&a1, 60));
    add("ratchet_message", "bad-tag", flip(&a1, a1.len() - 1));
    add("ratchet_message", "bad-gap", far);

    // sealed_open
    let bob_ik = f.bob.identity();
    let single = seal(&f.alice, &bob_ik, 2, first, &mut rng).expect("seal");
    let single_v2 = single.clone();
    let empty = seal(&f.alice, &bob_ik, 0, b"", &mut rng).expect("seal");
    let multi = seal_multi(&f.alice, &[f.alice.identity(), bob_ik], 1, b"to a group", &mut rng)
        .expect("seal_multi")
        .envelope(1)
        .expect("Bob's envelope");
    let to_alice = seal(&f.bob, &f.alice.identity(), 1, b"x", &mut rng).expect("seal");
    let mut zero_ephemeral = empty.clone();
    zero_ephemeral[2..34].fill(0);
    add("sealed_open", "ok-single", single);
    add("sealed_open", "ok-empty", empty.clone());
    add("sealed_open", "ok-multi", multi.clone());
    add("sealed_open", "bad-recipient", to_alice);
    add("sealed_open", "bad-truncated", cut(&multi, 100));
    add("sealed_open", "bad-kind", set(&empty, 1, 3));
    add("sealed_open", "bad-ephemeral", zero_ephemeral);
    add("sealed_open", "bad-tag", flip(&multi, multi.len() - 1));
    add("sealed_open", "bad-legacy-version", set(&single_v2, 0, 1));
    add("sealed_open", "bad-auth-tag", flip(&single_v2, 34 + 32));

    // sender_key
    let sf = sender_fixture();
    add("sender_key", "ok-message-0", sf.messages[0].clone());
    add("sender_key", "ok-message-2", sf.messages[2].clone());
    add("sender_key", "ok-distribution", sf.distribution.encode().to_vec());
    add("sender_key", "bad-replayed-1", sf.messages[1].clone());
    add(
        "sender_key",
        "bad-signature",
        flip(&sf.messages[2], sf.messages[2].len() - 1),
    );
    add("sender_key", "bad-truncated", cut(&sf.messages[2], 60));

    // group_seal
    let gk = group_key();
    let group_msg = gk.seal(1, &sf.messages[0], &mut rng).expect("group seal");
    let group_empty = gk.seal(0, b"", &mut rng).expect("group seal");
    let other_key = GroupSealKey::from_bytes(&[0x48; 32])
        .seal(1, b"another group", &mut rng)
        .expect("group seal");
    add("group_seal", "ok-sender-key-message", group_msg.clone());
    add("group_seal", "ok-empty", group_empty.clone());
    add("group_seal", "bad-other-key", other_key);
    add("group_seal", "bad-tag", flip(&group_msg, group_msg.len() - 1));
    add("group_seal", "bad-hint", flip(&group_empty, 40));
    add("group_seal", "bad-version", set(&group_empty, 0, 2));
    add("group_seal", "bad-truncated", cut(&group_msg, 100));

    // pickle
    let inner = |ty: u8, pickle: &[u8]| {
        let fields = pickle_wrap::open(pickle).expect("the fixture's pickles open");
        [&[ty][..], &fields].concat()
    };
    let session = &f.established.bob;
    add("pickle", "ok-session", session.clone());
    add("pickle", "ok-device", pickle_of(&f.bob));
    add("pickle", "ok-kem-prekey", pickle_of(&f.kem));
    add(
        "pickle",
        "ok-list-key",
        pickle_of(&f.alice_ak.list_key(2).expect("epoch 2")),
    );
    add("pickle", "ok-inner-account-key", inner(1, &pickle_of(&f.alice_ak)));
    add("pickle", "ok-inner-session", inner(3, &f.responded.alice));
    add("pickle", "ok-inner-x25519-prekey", inner(4, &pickle_of(&f.opk)));
    add("pickle", "bad-tag", flip(session, session.len() - 1));
    add("pickle", "bad-truncated", cut(session, 40));
    add("pickle", "bad-type", set(session, 1, 9));

    // interaction
    use op::byte;
    let (a, b) = (byte(op::ALICE_SENDS, 1), byte(op::BOB_SENDS, 2));
    let (oldest, newest) = (byte(op::DELIVER_OLDEST, 0), byte(op::DELIVER_NEWEST, 0));
    let (second, drop_second) = (byte(op::DELIVER, 1), byte(op::DROP, 1));
    let (replay_first, replay_fourth) = (byte(op::REPLAY, 0), byte(op::REPLAY, 3));
    let (restore_alice, restore_bob) = (byte(op::RESTORE, 0), byte(op::RESTORE, 1));
    let ping_pong = vec![0, a, oldest, b, oldest, a, a, oldest, oldest, b, oldest];
    let responded = vec![1, a, a, b, newest, oldest, a, oldest, oldest, b, oldest];
    let mut reorder = vec![2, a, a, a, a, newest, second, b, b, newest, oldest, oldest];
    reorder.extend([replay_first, replay_fourth]);
    let restore_drop = vec![
        4,
        a,
        restore_alice,
        b,
        drop_second,
        restore_bob,
        oldest,
        a,
        restore_bob,
        oldest,
    ];
    // Alice's message 0 of a chain stays in flight while eight round trips evict the
    // chain from Bob's session; her message 1 of that chain made him skip its key. Her
    // second pre-key message, on the chain before, is read from a key derived up to `pn`.
    let mut eviction = vec![6, a, a, newest];
    for _ in 0..8 {
        eviction.extend([b, newest, a, newest]);
    }
    eviction.extend([oldest, byte(op::REPLAY, 2)]);
    add("interaction", "ok-ping-pong", ping_pong);
    add("interaction", "ok-responded", responded);
    add("interaction", "ok-reorder-replay", reorder);
    add("interaction", "ok-restore-drop", restore_drop);
    add("interaction", "ok-eviction", eviction);

    // profile (its own generator, so the seeds of the other targets stay as they were)
    let mut rng = ChaCha20Rng::seed_from_u64(CORPUS_SEED ^ 0x50);
    let (pk, pa) = profile_key();
    let named = pk.encrypt(&pa, b"Alice", &mut rng).expect("profile");
    let empty = pk.encrypt(&pa, b"", &mut rng).expect("profile");
    add("profile", "ok-named", named.clone());
    add("profile", "ok-empty", empty.clone());
    add(
        "profile",
        "bad-other-account",
        pk.encrypt(&AccountId([0x52; 32]), b"x", &mut rng).expect("profile"),
    );
    add("profile", "bad-tag", flip(&named, named.len() - 1));
    add("profile", "bad-nonce", flip(&named, 5));
    add("profile", "bad-version", set(&empty, 0, 2));
    add("profile", "bad-truncated", cut(&named, 200));

    // attachment (its own generator too)
    let mut rng = ChaCha20Rng::seed_from_u64(CORPUS_SEED ^ 0x41);
    let ak = attachment_key();
    let seal = |len: u16, rng: &mut ChaCha20Rng| {
        let plain: Vec<u8> = (0..usize::from(len)).map(|i| (i % 251) as u8).collect();
        let mut e = sotto_crypto::attachment::Encryptor::new(&ak, u64::from(len), rng).expect("attachment");
        let mut ct = e.header().to_vec();
        e.update(&plain, &mut ct).expect("plaintext");
        let digest = e.finish(&mut ct).expect("padding");
        (ct, digest)
    };
    let (small, small_digest) = seal(5, &mut rng);
    let (two, two_digest) = seal(65_535, &mut rng);
    add("attachment", "ok-small", attachment_input(5, 1, &small_digest, &small));
    add("attachment", "ok-empty", {
        let (ct, d) = seal(0, &mut rng);
        attachment_input(0, 3, &d, &ct)
    });
    add(
        "attachment",
        "ok-one-full-chunk",
        attachment_input(65_535, 200, &two_digest, &two),
    );
    add(
        "attachment",
        "bad-tag",
        attachment_input(5, 1, &small_digest, &flip(&small, small.len() - 1)),
    );
    add("attachment", "bad-digest", attachment_input(5, 1, &[0; 32], &small));
    add(
        "attachment",
        "bad-length",
        attachment_input(6, 1, &small_digest, &small),
    );
    add(
        "attachment",
        "bad-truncated",
        attachment_input(5, 1, &small_digest, &cut(&small, 100)),
    );

    // token (its own generator too)
    let mut rng = ChaCha20Rng::seed_from_u64(CORPUS_SEED ^ 0x70);
    let issuer = token_issuer();
    let req = sotto_crypto::TokenRequest::new(3, &mut rng).expect("three");
    let (evaluated, proof) = issuer.issue(req.blinded(), &mut rng).expect("issued");
    let tokens = req.finish(&issuer.public(), &evaluated, &proof).expect("verified");
    add("token", "ok-token", tokens[0].to_vec());
    add("token", "ok-batch", req.blinded().concat());
    add("token", "bad-token", flip(&tokens[1], 40));
    add("token", "bad-point", vec![0xff; 32]);
    add("token", "bad-identity", vec![0; 64]);

    out
}

// ---------------------------------------------------------------------------------------
// Sealing fuzz bytes as a pickle's inner plaintext.

/// Pickles as sotto-crypto writes them (docs/protocol.md §9):
/// `0x01 ‖ type ‖ nonce (24) ‖ XChaCha20-Poly1305(key, nonce, inner, ad = "Sotto-v1 pickle" ‖ 0x01 ‖ type)`,
/// under the fixture's pickle key. sotto-crypto has no public entry point to the field
/// decoders behind the AEAD, and the replay test cannot depend on an AEAD crate, so the
/// AEAD is spelled out here (RFC 8439 ChaCha20 and Poly1305, HChaCha20 from
/// draft-irtf-cfrg-xchacha). It is checked against sotto-crypto's own pickles in
/// `tests/fuzz_corpus.rs`. Test code only: not constant time.
pub mod pickle_wrap {
    const AD_LABEL: &[u8] = b"Sotto-v1 pickle";

    /// Seals `inner` as a pickle of type `ty` under the fixture key with `nonce`.
    pub fn seal(ty: u8, inner: &[u8], nonce: &[u8; 24]) -> Vec<u8> {
        let (key, n) = subkey(&super::PICKLE_KEY, nonce);
        let mut ct = inner.to_vec();
        xor_stream(&key, &n, &mut ct);
        let tag = poly1305(&one_time_key(&key, &n), &mac_input(&ad(ty), &ct));
        [&[1, ty][..], nonce, &ct, &tag].concat()
    }

    /// Opens a pickle made under the fixture key: its inner plaintext, or `None`.
    pub fn open(pickle: &[u8]) -> Option<Vec<u8>> {
        let (&ty, rest) = pickle.strip_prefix(&[1])?.split_first()?;
        let (nonce, sealed) = rest.split_at_checked(24)?;
        let nonce: &[u8; 24] = nonce.try_into().ok()?;
        let (ct, tag) = sealed.split_at_checked(sealed.len().checked_sub(16)?)?;
        let (key, n) = subkey(&super::PICKLE_KEY, nonce);
        if poly1305(&one_time_key(&key, &n), &mac_input(&ad(ty), ct)) != tag {
            return None;
        }
        let mut inner = ct.to_vec();
        xor_stream(&key, &n, &mut inner);
        Some(inner)
    }

    fn ad(ty: u8) -> Vec<u8> {
        [AD_LABEL, &[1, ty]].concat()
    }

    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn quarter_round(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(16);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(12);
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(8);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(7);
    }

    fn double_rounds(s: &mut [u32; 16]) {
        for _ in 0..10 {
            quarter_round(s, 0, 4, 8, 12);
            quarter_round(s, 1, 5, 9, 13);
            quarter_round(s, 2, 6, 10, 14);
            quarter_round(s, 3, 7, 11, 15);
            quarter_round(s, 0, 5, 10, 15);
            quarter_round(s, 1, 6, 11, 12);
            quarter_round(s, 2, 7, 8, 13);
            quarter_round(s, 3, 4, 9, 14);
        }
    }

    fn initial_state(key: &[u8; 32], last: [u32; 4]) -> [u32; 16] {
        let mut s = [0u32; 16];
        s[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
        for (w, k) in s[4..12].iter_mut().zip(key.chunks_exact(4)) {
            *w = le32(k);
        }
        s[12..].copy_from_slice(&last);
        s
    }

    /// XChaCha20: HChaCha20 of the key and the nonce's first 16 bytes, and the 12-byte
    /// ChaCha20 nonce `0^4 ‖ nonce[16..24]`.
    fn subkey(key: &[u8; 32], nonce: &[u8; 24]) -> ([u8; 32], [u8; 12]) {
        let words = [0, 4, 8, 12].map(|i| le32(&nonce[i..]));
        let mut s = initial_state(key, words);
        double_rounds(&mut s);
        let mut sub = [0u8; 32];
        for (out, w) in sub.chunks_exact_mut(4).zip(s[..4].iter().chain(&s[12..])) {
            out.copy_from_slice(&w.to_le_bytes());
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        (sub, n)
    }

    fn block(key: &[u8; 32], counter: u32, nonce: &[u8; 12]) -> [u8; 64] {
        let init = initial_state(key, [counter, le32(nonce), le32(&nonce[4..]), le32(&nonce[8..])]);
        let mut s = init;
        double_rounds(&mut s);
        let mut out = [0u8; 64];
        for ((o, w), i) in out.chunks_exact_mut(4).zip(s).zip(init) {
            o.copy_from_slice(&w.wrapping_add(i).to_le_bytes());
        }
        out
    }

    fn xor_stream(key: &[u8; 32], nonce: &[u8; 12], buf: &mut [u8]) {
        for (counter, chunk) in (1u32..).zip(buf.chunks_mut(64)) {
            for (b, k) in chunk.iter_mut().zip(block(key, counter, nonce)) {
                *b ^= k;
            }
        }
    }

    fn one_time_key(key: &[u8; 32], nonce: &[u8; 12]) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&block(key, 0, nonce)[..32]);
        k
    }

    fn mac_input(ad: &[u8], ct: &[u8]) -> Vec<u8> {
        let mut m = ad.to_vec();
        m.resize(ad.len().div_ceil(16) * 16, 0);
        m.extend_from_slice(ct);
        m.resize(m.len().div_ceil(16) * 16, 0);
        m.extend_from_slice(&(ad.len() as u64).to_le_bytes());
        m.extend_from_slice(&(ct.len() as u64).to_le_bytes());
        m
    }

    /// Poly1305 in 26-bit limbs (after poly1305-donna).
    pub fn poly1305(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
        const M: u32 = 0x3ff_ffff;
        let r = [
            le32(key) & 0x3ff_ffff,
            (le32(&key[3..]) >> 2) & 0x3ff_ff03,
            (le32(&key[6..]) >> 4) & 0x3ff_c0ff,
            (le32(&key[9..]) >> 6) & 0x3f0_3fff,
            (le32(&key[12..]) >> 8) & 0x00f_ffff,
        ]
        .map(u64::from);
        let s = [0, r[1] * 5, r[2] * 5, r[3] * 5, r[4] * 5];
        let mut h = [0u32; 5];
        for chunk in msg.chunks(16) {
            let mut m = [0u8; 17];
            m[..chunk.len()].copy_from_slice(chunk);
            m[chunk.len()] = 1;
            let hibit = if chunk.len() == 16 { 1 << 24 } else { 0 };
            h[0] += le32(&m) & M;
            h[1] += (le32(&m[3..]) >> 2) & M;
            h[2] += (le32(&m[6..]) >> 4) & M;
            h[3] += (le32(&m[9..]) >> 6) & M;
            h[4] += (le32(&m[12..]) >> 8) | hibit;
            let g = h.map(u64::from);
            let d = [
                g[0] * r[0] + g[1] * s[4] + g[2] * s[3] + g[3] * s[2] + g[4] * s[1],
                g[0] * r[1] + g[1] * r[0] + g[2] * s[4] + g[3] * s[3] + g[4] * s[2],
                g[0] * r[2] + g[1] * r[1] + g[2] * r[0] + g[3] * s[4] + g[4] * s[3],
                g[0] * r[3] + g[1] * r[2] + g[2] * r[1] + g[3] * r[0] + g[4] * s[4],
                g[0] * r[4] + g[1] * r[3] + g[2] * r[2] + g[3] * r[1] + g[4] * r[0],
            ];
            let mut c = 0u64;
            for (hi, di) in h.iter_mut().zip(d) {
                let v = di + c;
                *hi = (v as u32) & M;
                c = v >> 26;
            }
            h[0] += (c as u32) * 5;
            let c = h[0] >> 26;
            h[0] &= M;
            h[1] += c;
        }
        // Full carry, then h mod 2^130 - 5.
        let mut c = 0;
        for hi in &mut h[1..] {
            *hi += c;
            c = *hi >> 26;
            *hi &= M;
        }
        h[0] += c * 5;
        c = h[0] >> 26;
        h[0] &= M;
        h[1] += c;
        let mut g = [0u32; 5];
        c = 5;
        for (gi, hi) in g.iter_mut().zip(h).take(4) {
            *gi = hi + c;
            c = *gi >> 26;
            *gi &= M;
        }
        g[4] = (h[4] + c).wrapping_sub(1 << 26);
        if g[4] >> 31 == 0 {
            h = g;
        }
        let words = [
            h[0] | (h[1] << 26),
            (h[1] >> 6) | (h[2] << 20),
            (h[2] >> 12) | (h[3] << 14),
            (h[3] >> 18) | (h[4] << 8),
        ];
        let mut tag = [0u8; 16];
        let mut carry = 0u64;
        for ((t, w), k) in tag.chunks_exact_mut(4).zip(words).zip(key[16..].chunks_exact(4)) {
            let v = u64::from(w) + u64::from(le32(k)) + carry;
            t.copy_from_slice(&(v as u32).to_le_bytes());
            carry = v >> 32;
        }
        tag
    }
}
