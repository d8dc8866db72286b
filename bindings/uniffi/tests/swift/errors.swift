// Every SottoError case, with its stable code() and isRetryable(), in Swift.
//
// Each case is provoked through a real call where a call can provoke it; the others are
// constructed here and their code() is asked of the Rust side all the same (the error is
// lowered into Rust for the call). Those others are a store written by another process at
// the same moment (store_conflict), a contact's device list that does not verify
// (device_list: it takes a relay that serves a forged list), a join that nobody answers
// (link_timeout: five minutes), a failing sender-key encryption (sender_key), a panic in
// the binding (internal) and a failing OS random generator (entropy); the unit tests in
// bindings/uniffi/src/lib.rs map the SDK errors behind them to these cases. The chat
// errors come from real calls too: a text over 64 KiB, a timer over a year, retrying a
// message that has not failed, editing a message that does not exist and one the contact
// wrote, sending to a blocked contact, sending to a contact whose account linked a second
// device since, and opening a store a client of this process runs. Called from
// main.swift.

import Foundation

// Helpers of this file's own: calling main.swift's top-level functions from another file
// crashes swiftc 6.0 (it lowers their captures of main.swift's globals).

func require(_ ok: Bool, _ what: @autoclosure () -> String) {
    if !ok {
        print("swift: check failed: \(what())")
        exit(1)
    }
}

func randomKey() -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) })
}

/// The next event of `client` that matches.
func nextEvent(_ client: SottoClient, _ predicate: (Event) -> Bool) async -> Event {
    while true {
        guard let e = await client.nextEvent() else {
            require(false, "the event stream ended")
            fatalError()
        }
        if predicate(e) { return e }
    }
}

/// Every case's stable code and whether it is retryable (nil: the relay's code decides);
/// the same table is in lib.rs's unit tests and the Kotlin and Python tests. The switch
/// has no default: a new case does not compile until it is added here.
func expectedCode(_ e: SottoError) -> (String, Bool?) {
    switch e {
    case .WrongStoreKey: return ("wrong_store_key", false)
    case .StoreConflict: return ("store_conflict", true)
    case .Store: return ("store", false)
    case .Network: return ("network", true)
    case .Relay: return ("relay", nil)
    case .Transport: return ("transport", false)
    case .Refused: return ("refused", false)
    case .DeviceList: return ("device_list", false)
    case .AccountExists: return ("account_exists", false)
    case .NoAccount: return ("no_account", false)
    case .BadContact: return ("bad_contact", false)
    case .UnknownContact: return ("unknown_contact", false)
    case .BadLinkCode: return ("bad_link_code", false)
    case .Link: return ("link", false)
    case .NoAccountKey: return ("no_account_key", false)
    case .NoListKey: return ("no_list_key", false)
    case .NeedsRecoveryKey: return ("needs_recovery_key", false)
    case .BadRecoveryKey: return ("bad_recovery_key", false)
    case .UnknownLinkRequest: return ("unknown_link_request", false)
    case .LinkTimeout: return ("link_timeout", false)
    case .BadGroupId: return ("bad_group_id", false)
    case .UnknownGroup: return ("unknown_group", false)
    case .NotGroupAdmin: return ("not_group_admin", false)
    case .Group: return ("group", false)
    case .SenderKey: return ("sender_key", false)
    case .InvalidArgument: return ("invalid_argument", false)
    case .Closed: return ("closed", false)
    case .Internal: return ("internal", false)
    case .Entropy: return ("entropy", false)
    case .UnknownMessage: return ("unknown_message", false)
    case .NotAuthor: return ("not_author", false)
    case .NotQueued: return ("not_queued", false)
    case .Blocked: return ("blocked", false)
    case .IdentityUnacknowledged: return ("identity_unacknowledged", false)
    case .TooLong: return ("too_long", false)
    case .TimerTooLong: return ("timer_too_long", false)
    case .DeviceInUse: return ("device_in_use", true)
    case .AttachmentCorrupt: return ("attachment_corrupt", false)
    case .Cancelled: return ("cancelled", false)
    case .File: return ("file", false)
    }
}

/// The number of cases in `expectedCode`.
let errorCaseCount = 40

final class SeenErrors {
    var provoked = Set<String>()
    var constructed = Set<String>()

    @discardableResult
    func record(_ e: SottoError, retryable: Bool? = nil, provokedByCall: Bool = true) -> SottoError {
        let (code, fixed) = expectedCode(e)
        require(e.code() == code, "\(e): code() is \(e.code()), not \(code)")
        require(e.isRetryable() == (fixed ?? retryable), "\(e): isRetryable() is \(e.isRetryable())")
        if provokedByCall { provoked.insert(code) } else { constructed.insert(code) }
        return e
    }

    /// Runs `body`, which must fail with the case whose code is `code`.
    @discardableResult
    func expect(_ code: String, retryable: Bool? = nil, _ body: () async throws -> Void) async -> SottoError {
        do {
            try await body()
        } catch let e as SottoError {
            require(expectedCode(e).0 == code, "expected \(code), got \(e)")
            return record(e, retryable: retryable)
        } catch {
            require(false, "expected SottoError with code \(code), got \(error)")
        }
        require(false, "expected SottoError with code \(code), got no error")
        fatalError()
    }
}

func everyError(relay: String, folder: String) async throws {
    let seen = SeenErrors()
    let opts = ClientOptions()
    let key = randomKey()
    let path = folder + "/erin.db"

    // The store and its key.
    await seen.expect("invalid_argument") {
        _ = try await SottoClient.open(storePath: path, storeKey: Data([1, 2, 3]), options: opts)
    }
    await seen.expect("no_account") {
        _ = try await SottoClient.open(storePath: folder + "/none.db", storeKey: key, options: opts)
    }
    await seen.expect("store") {  // a directory
        _ = try await SottoClient.open(storePath: folder, storeKey: key, options: opts)
    }
    // The relay URL and the network.
    await seen.expect("transport") {
        _ = try await SottoClient.createAccount(
            storePath: folder + "/t.db", storeKey: key, relayUrl: "ftp://relay.example", options: opts)
    }
    await seen.expect("network") {
        _ = try await SottoClient.createAccount(
            storePath: folder + "/n.db", storeKey: key, relayUrl: "http://127.0.0.1:1", options: opts)
    }

    let erin = try await SottoClient.createAccount(storePath: path, storeKey: key, relayUrl: relay, options: opts)
    let me = erin.accountId()
    await seen.expect("account_exists") {
        _ = try await SottoClient.createAccount(storePath: path, storeKey: key, relayUrl: relay, options: opts)
    }

    // Contacts: an id nobody registered (the same id with another first character).
    let stranger = (me.hasPrefix("a") ? "b" : "a") + String(me.dropFirst())
    await seen.expect("bad_contact") { _ = try await erin.sendText(contact: "not an account", text: "x") }
    await seen.expect("unknown_contact") { _ = try await erin.safetyNumber(contact: stranger) }
    let refusal = await seen.expect("relay", retryable: false) { _ = try await erin.addContact(contact: stranger) }
    require(refusal == .Relay(status: 404, relayCode: 20, relayCodeName: "UNKNOWN_ACCOUNT", retryable: false),
          "\(refusal)")
    await seen.expect("refused") { _ = try await erin.sendText(contact: me, text: "to myself") }
    let inUse = await seen.expect("device_in_use") {
        _ = try await SottoClient.open(storePath: path, storeKey: key, options: opts)
    }
    require(inUse == .DeviceInUse(role: "app"), "\(inUse)")

    // Chat, with Frank: a contact both ways.
    let frank = try await SottoClient.createAccount(
        storePath: folder + "/frank.db", storeKey: randomKey(), relayUrl: relay, options: opts)
    let f = try await erin.addContact(contact: frank.contactLink())
    _ = try await frank.addContact(contact: erin.contactLink())
    let toFrank = Conversation.direct(account: f)
    let tooLong = await seen.expect("too_long") {
        _ = try await erin.sendMessage(conversation: toFrank, text: String(repeating: "x", count: 64 * 1024 + 1))
    }
    require(tooLong == .TooLong(len: 64 * 1024 + 1, max: 64 * 1024), "\(tooLong)")
    let timer = await seen.expect("timer_too_long") {
        _ = try await erin.setTimer(conversation: toFrank, expireS: 400 * 24 * 3600)
    }
    require(timer == .TimerTooLong(maxS: 366 * 24 * 3600), "\(timer)")
    let mine = try await erin.sendMessage(conversation: toFrank, text: "hi frank")
    await seen.expect("not_queued") { try await erin.retry(key: mine.key) }  // it has not failed
    let nothing = MessageKey(conversation: toFrank, sender: me, id: "00000000-0000-7000-8000-000000000000")
    await seen.expect("unknown_message") { try await erin.edit(key: nothing, text: "x") }
    _ = try await frank.sendMessage(conversation: .direct(account: me), text: "hi erin")
    let hiErin = await nextEvent(erin) {
        if case .messageReceived(let m) = $0 { return m.text == "hi erin" } else { return false }
    }
    guard case .messageReceived(let theirs) = hiErin else { fatalError() }
    await seen.expect("not_author") {
        try await erin.edit(key: MessageKey(conversation: toFrank, sender: theirs.senderAccount, id: theirs.id), text: "x")
    }
    try await erin.block(contact: f)
    await seen.expect("blocked") { _ = try await erin.sendMessage(conversation: toFrank, text: "blocked") }
    try await erin.unblock(contact: f)

    // Devices: a second device that is given the list key.
    await seen.expect("bad_link_code") {
        _ = try await PendingJoin.startJoin(
            storePath: folder + "/x.db", storeKey: randomKey(), relayUrl: relay, code: "sotto-link:nonsense",
            deviceName: "x", options: opts)
    }
    let code = try await erin.linkNewDevice()
    let pending = try await PendingJoin.startJoin(
        storePath: folder + "/erin2.db", storeKey: randomKey(), relayUrl: relay, code: code, deviceName: "erin 2",
        options: opts)
    let req = await nextEvent(erin) { if case .linkRequested = $0 { return true } else { return false } }
    guard case let .linkRequested(id, _, _) = req else { fatalError() }
    await seen.expect("unknown_link_request") { try await erin.confirmLink(id: id ^ 1, grantListKey: true) }
    try await erin.confirmLink(id: id, grantListKey: true)
    let erin2 = try await pending.waitJoined()
    await seen.expect("closed") { _ = try await pending.waitJoined() }  // callable once
    // Frank's next send learns Erin's new device (the relay answers with her device list):
    // her safety number changed, and his sends wait for him to acknowledge it. (The SDK does
    // not emit IdentityChanged for it yet: DeviceListChanged is awaited.)
    _ = try await frank.sendMessage(conversation: .direct(account: me), text: "after the second device")
    let second = erin2.deviceId()
    _ = await nextEvent(frank) {
        if case .deviceListChanged(let account, let added, _, _) = $0 { return account == me && added.contains(second) }
        return false
    }
    await seen.expect("identity_unacknowledged") {
        _ = try await frank.sendMessage(conversation: .direct(account: me), text: "x")
    }
    try await frank.acknowledgeIdentity(contact: me)
    _ = try await frank.sendMessage(conversation: .direct(account: me), text: "acknowledged")
    await seen.expect("needs_recovery_key") { try await erin.removeDevice(deviceId: erin2.deviceId()) }
    await seen.expect("link") { try await erin.removeDevice(deviceId: erin.deviceId()) }  // itself
    let rk = try await erin.exportRecoveryKey()
    await seen.expect("no_account_key") { _ = try await erin.exportRecoveryKey() }
    let wrongRk = String(rk.dropLast()) + (rk.hasSuffix("0") ? "1" : "0")
    await seen.expect("bad_recovery_key") { try await erin2.recoverAccount(recoveryKey: wrongRk) }
    // The second device takes a new list key: the first one's stops counting.
    try await erin2.recoverAccount(recoveryKey: rk)
    await seen.expect("no_list_key") { try await erin.removeDevice(deviceId: erin2.deviceId()) }

    // Groups.
    await seen.expect("bad_group_id") { _ = try await erin.sendGroupText(group: "not a group", text: "x") }
    await seen.expect("unknown_group") {
        _ = try await erin.sendGroupText(group: String(repeating: "0", count: 64), text: "x")
    }
    let g = try await erin.createGroup(title: "team", members: [f])
    await seen.expect("group") { try await erin.addGroupMembers(group: g, members: []) }  // a change without changes
    _ = await nextEvent(frank) {  // the welcome
        if case .groupChanged(let group) = $0 { return group == g } else { return false }
    }
    await seen.expect("not_group_admin") { try await frank.renameGroup(group: g, title: "renamed") }

    await frank.shutdown()
    await erin2.shutdown()
    await erin.shutdown()
    await seen.expect("closed") { _ = try await erin.conversations() }
    // Once no client runs the store (while one does, opening it is DeviceInUse).
    await seen.expect("wrong_store_key") {
        _ = try await SottoClient.open(storePath: path, storeKey: randomKey(), options: opts)
    }

    // The cases no call here can provoke (see the top of this file).
    for e: SottoError in [
        .StoreConflict, .DeviceList(reason: "forged"), .LinkTimeout, .SenderKey(reason: "r"), .Internal(reason: "r"),
        .Entropy, .AttachmentCorrupt(reason: "r"), .Cancelled, .File(reason: "r"),
    ] {
        seen.record(e, provokedByCall: false)
    }
    // A retryable relay refusal, built by hand.
    seen.record(
        .Relay(status: 429, relayCode: 40, relayCodeName: "RATE_LIMITED", retryable: true), retryable: true,
        provokedByCall: false)

    let covered = seen.provoked.union(seen.constructed)
    require(covered.count == errorCaseCount, "covered \(covered.count) of \(errorCaseCount) cases: \(covered.sorted())")
    print("swift: \(seen.provoked.count) error cases provoked, \(seen.constructed.subtracting(seen.provoked).count) constructed")
}
