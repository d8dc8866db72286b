// Swift tests of the sotto_ffi binding against the relay at $SOTTO_RELAY_URL: two clients
// register, exchange messages both ways, read their history after reopening their stores,
// and see errors as typed errors. Built with swiftc and run by scripts/bindings.sh.

import Foundation

let env = ProcessInfo.processInfo.environment
guard let relay = env["SOTTO_RELAY_URL"], let dir = env["SOTTO_TEST_DIR"] else {
    fatalError("SOTTO_RELAY_URL and SOTTO_TEST_DIR must be set")
}

// Failsafe only: every wait returns as soon as the event arrives.
Task.detached {
    try? await Task.sleep(nanoseconds: 120 * 1_000_000_000)
    print("swift: timed out")
    exit(1)
}

func check(_ ok: Bool, _ what: @autoclosure () -> String) {
    if !ok {
        print("swift: check failed: \(what())")
        exit(1)
    }
}

func newKey() -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) })
}

func waitFor(_ client: SottoClient, _ predicate: (Event) -> Bool) async -> Event {
    while true {
        guard let e = await client.nextEvent() else {
            check(false, "the event stream ended")
            fatalError()
        }
        if predicate(e) { return e }
    }
}

func received(_ text: String) -> (Event) -> Bool {
    return { e in
        if case .messageReceived(let m) = e { return m.text == text }
        return false
    }
}

func sentEvent(_ id: String) -> (Event) -> Bool {
    return { e in
        if case .messageSent(let sid, _) = e { return sid == id }
        return false
    }
}

func expectError(_ expected: String, _ body: () async throws -> Void) async -> SottoError? {
    do {
        try await body()
    } catch let e as SottoError {
        check(e.code() == expected, "expected \(expected), got \(e)")
        return e
    } catch {
        check(false, "expected SottoError.\(expected), got \(error)")
    }
    check(false, "expected SottoError.\(expected), got no error")
    return nil
}

final class Listener: EventListener, @unchecked Sendable {
    let continuation: AsyncStream<Event>.Continuation
    init(_ continuation: AsyncStream<Event>.Continuation) { self.continuation = continuation }
    func onEvent(event: Event) { continuation.yield(event) }  // on an SDK thread
}

let keyA = newKey()
let keyB = newKey()
let pathA = dir + "/alice.db"
let pathB = dir + "/bob.db"
let opts = ClientOptions()

do {
    // Alice's receipts wait ten minutes in this first session (shutdown keeps them queued).
    let slowReceipts = ClientOptions(receiptDelayMinMs: 600_000, receiptDelayMaxMs: 600_001)
    var alice = try await SottoClient.createAccount(
        storePath: pathA, storeKey: keyA, relayUrl: relay, options: slowReceipts)
    var bob = try await SottoClient.createAccount(storePath: pathB, storeKey: keyB, relayUrl: relay, options: opts)
    let a = alice.accountId()
    let b = bob.accountId()
    check(a.count == 52 && a != b, "account ids")
    check(alice.contactLink().hasPrefix("sotto:" + a + ".") && alice.contactLink().count == 6 + 52 + 1 + 64, alice.contactLink())
    check(alice.deviceId() == 1, "device id")

    check(try await alice.addContact(contact: bob.contactLink()) == b, "addContact")
    check(try await bob.addContact(contact: a) == a, "addContact")

    let sent = try await alice.sendText(contact: b, text: "hello bob")
    check(sent.status == .queued && sent.conversation == b, "\(sent)")
    guard case .messageReceived(let got) = await waitFor(bob, received("hello bob")) else { fatalError() }
    check(got.senderAccount == a && got.senderDevice == 1 && got.id == sent.id, "\(got)")
    check(got.status == .received && got.conversation == a, "\(got)")
    _ = await waitFor(alice, sentEvent(sent.id))

    let reply = try await bob.sendText(contact: a, text: "hi alice")
    _ = await waitFor(alice, received("hi alice"))
    _ = await waitFor(bob, sentEvent(reply.id))

    let snA = try await alice.safetyNumber(contact: b)
    let snB = try await bob.safetyNumber(contact: a)
    check(snA == snB && snA.split(separator: " ").count == 12, snA)

    // Errors are typed errors with a stable code.
    let bad = await expectError("bad_contact") { _ = try await alice.sendText(contact: "not an account", text: "x") }
    if case .BadContact = bad {} else { check(false, "not .BadContact: \(String(describing: bad))") }
    check(bad?.isRetryable() == false, "retryable")
    _ = await expectError("invalid_argument") { _ = try await SottoClient.open(storePath: pathA, storeKey: Data([1, 2, 3]), options: opts) }
    _ = await expectError("account_exists") {
        _ = try await SottoClient.createAccount(storePath: pathA, storeKey: keyA, relayUrl: relay, options: opts)
    }

    // History after reopening the stores.
    await alice.shutdown()
    await bob.shutdown()
    _ = await expectError("closed") { _ = try await alice.conversations() }
    let wrong = await expectError("wrong_store_key") { _ = try await SottoClient.open(storePath: pathA, storeKey: newKey(), options: opts) }
    if case .WrongStoreKey = wrong {} else { check(false, "not .WrongStoreKey") }

    alice = try await SottoClient.open(storePath: pathA, storeKey: keyA, options: ClientOptions(connect: false))
    check(alice.accountId() == a, "reopened account")
    check(try await alice.conversations() == [b], "conversations")
    let history = try await alice.messages(conversation: b, page: Page())
    check(history.map { $0.text } == ["hello bob", "hi alice"], "\(history)")
    check(history.map { $0.senderAccount } == [a, b], "\(history)")
    check(history[0].status == .sent || history[0].status == .delivered, "\(history[0])")
    check(history[1].status == .received, "\(history[1])")
    let older = try await alice.messages(conversation: b, page: Page(before: history[1].order, limit: 10))
    check(older.map { $0.text } == ["hello bob"], "\(older)")
    // Her receipt for bob's reply was still waiting: shutdown kept it in the outbox.
    check(try await alice.outboxLen() == 1, "outbox")
    await alice.shutdown()

    // Back online, the conversation goes on; bob listens through a callback interface.
    bob = try await SottoClient.open(storePath: pathB, storeKey: keyB, options: opts)
    alice = try await SottoClient.open(storePath: pathA, storeKey: keyA, options: opts)
    var continuation: AsyncStream<Event>.Continuation?
    let events = AsyncStream<Event> { continuation = $0 }
    guard let continuation else { fatalError() }
    let subscription = try bob.subscribe(listener: Listener(continuation))
    _ = try await alice.sendText(contact: b, text: "after reopening")
    for await e in events where received("after reopening")(e) { break }
    subscription.cancel()
    let bh = try await bob.messages(conversation: a, page: Page())
    check(bh.map { $0.text } == ["hello bob", "hi alice", "after reopening"], "\(bh)")

    // Device linking: alice's second device asks to join with the code her first device
    // shows; her first device shows its name and fingerprint and she confirms (without the
    // account key); bob's next message reaches both.
    let code = try await alice.linkNewDevice()
    let pending = try await PendingJoin.startJoin(
        storePath: dir + "/alice2.db", storeKey: newKey(), relayUrl: relay, code: code,
        deviceName: "alice phone", options: opts)
    check(pending.deviceId() == 2, "asked for \(pending.deviceId())")
    let req = await waitFor(alice) { if case .linkRequested = $0 { return true } else { return false } }
    guard case let .linkRequested(id, deviceName, fingerprint) = req else { fatalError() }
    check(deviceName == "alice phone", deviceName)
    check(fingerprint == pending.fingerprint(), "fingerprints differ")
    _ = await expectError("unknown_link_request") { try await alice.confirmLink(id: id ^ 1, grantListKey: false) }
    try await alice.confirmLink(id: id, grantListKey: false)
    let alice2 = try await pending.waitJoined()
    check(alice2.accountId() == a && alice2.deviceId() == 2, "joined as \(alice2.deviceId())")
    let a1Manages = try await alice.canManageDevices()
    let a2Manages = try await alice2.canManageDevices()
    check(a1Manages && !a2Manages, "list key")
    _ = await expectError("no_list_key") { _ = try await alice2.linkNewDevice() }
    check(try await alice.devicesOf(accountId: a).sorted() == [1, 2], "alice's devices")
    _ = try await bob.sendText(contact: a, text: "to both devices")
    _ = await waitFor(alice, received("to both devices"))
    _ = await waitFor(alice2, received("to both devices"))
    let rk = try await alice.exportRecoveryKey()
    check(rk.hasPrefix("sotto-recovery:"), "recovery key")
    let stillHeld = try await alice.hasAccountKey()
    check(!stillHeld, "the recovery key goes out once")
    _ = await expectError("no_account_key") { _ = try await alice.exportRecoveryKey() }
    try await alice2.recoverAccount(recoveryKey: rk)
    let recovered = try await alice2.canManageDevices()
    check(recovered, "recovered")
    try await alice2.removeDevice(deviceId: 1)
    check(try await alice2.devicesOf(accountId: a) == [2], "alice's devices after removal")

    await alice2.shutdown()
    await alice.shutdown()
    await bob.shutdown()
    print("swift: all binding tests passed")
} catch {
    print("swift: unexpected error \(error)")
    exit(1)
}
