// Swift tests of the sotto_ffi binding against the relay at $SOTTO_RELAY_URL: two clients
// register, exchange messages both ways, read their history after reopening their stores,
// and see errors as typed errors; a group is created, talks, and loses a member, who gets
// nothing sent afterwards; every error case is checked by errors.swift, the live lists and
// send states by live.swift, attachments, push and the notification extension by
// media.swift. Built with swiftc and run by scripts/bindings.sh.

import Foundation

let env = ProcessInfo.processInfo.environment
guard let relay = env["SOTTO_RELAY_URL"], let dir = env["SOTTO_TEST_DIR"] else {
    fatalError("SOTTO_RELAY_URL and SOTTO_TEST_DIR must be set")
}

// Failsafe only: every wait returns as soon as the event arrives.
Task.detached {
    try? await Task.sleep(nanoseconds: 300 * 1_000_000_000)
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

func groupChanged(_ group: String) -> (Event) -> Bool {
    return { e in
        if case .groupChanged(let g) = e { return g == group }
        return false
    }
}

/// Waits until `client` holds `group` with exactly these member accounts.
func waitForMembers(_ client: SottoClient, _ group: String, _ members: [String]) async throws {
    while try await client.group(group: group)?.members.map({ $0.account }).sorted() != members.sorted() {
        _ = await waitFor(client, groupChanged(group))
    }
}

/// Bob creates a group with carol and dave (his contacts, added by link), all three talk,
/// then bob removes dave: carol still gets what is sent, dave gets nothing more.
func groups(_ bob: SottoClient, _ opts: ClientOptions) async throws {
    let b = bob.accountId()
    let carol = try await SottoClient.createAccount(
        storePath: dir + "/carol.db", storeKey: newKey(), relayUrl: relay, options: opts)
    let dave = try await SottoClient.createAccount(
        storePath: dir + "/dave.db", storeKey: newKey(), relayUrl: relay, options: opts)
    let c = carol.accountId()
    let d = dave.accountId()
    check(try await bob.addContact(contact: carol.contactLink()) == c, "addContact")
    check(try await bob.addContact(contact: dave.contactLink()) == d, "addContact")

    _ = await expectError("bad_contact") { _ = try await bob.createGroup(title: "team", members: [c, "not an account"]) }
    let g = try await bob.createGroup(title: "team", members: [c, d])
    check(g.count == 64 && g.allSatisfy { "0123456789abcdef".contains($0) }, "group id \(g)")
    guard let info = try await bob.group(group: g) else { fatalError("bob's group") }
    check(info.id == g && info.title == "team" && info.active && info.version == 0, "\(info)")
    let roles = Dictionary(uniqueKeysWithValues: info.members.map { ($0.account, $0.role) })
    check(roles == [b: .admin, c: .member, d: .member], "\(roles)")
    check(try await bob.groups().map { $0.id } == [g], "bob's groups")
    // The members join when bob's welcome arrives.
    _ = await waitFor(carol, groupChanged(g))
    _ = await waitFor(dave, groupChanged(g))
    let carolGroups = try await carol.groups()
    check(carolGroups.count == 1 && carolGroups[0].id == g && carolGroups[0].title == "team" && carolGroups[0].active,
          "\(carolGroups)")

    // A group message reaches every other member once, with the group id.
    let sent = try await bob.sendGroupText(group: g, text: "hello team")
    check(sent.group == g && sent.conversation == g && sent.status == .queued, "\(sent)")
    for member in [carol, dave] {
        guard case .messageReceived(let m) = await waitFor(member, received("hello team")) else { fatalError() }
        check(m.id == sent.id && m.group == g && m.conversation == g, "\(m)")
        check(m.senderAccount == b && m.status == .received, "\(m)")
    }
    _ = await waitFor(bob) { e in
        if case .messageSent(let id, let conversation) = e { return id == sent.id && conversation == g }
        return false
    }
    // Carol writes too.
    _ = try await carol.sendGroupText(group: g, text: "hi from carol")
    guard case .messageReceived(let got) = await waitFor(bob, received("hi from carol")) else { fatalError() }
    check(got.group == g && got.senderAccount == c, "\(got)")
    _ = await waitFor(dave, received("hi from carol"))

    // Errors: a malformed group id, a group this account is not in, a change by a non-admin.
    let badId = await expectError("bad_group_id") { _ = try await bob.sendGroupText(group: "not a group", text: "x") }
    if case .BadGroupId = badId {} else { check(false, "not .BadGroupId: \(String(describing: badId))") }
    check(badId?.isRetryable() == false, "retryable")
    let unknown = await expectError("unknown_group") {
        _ = try await bob.sendGroupText(group: String(repeating: "0", count: 64), text: "x")
    }
    if case .UnknownGroup = unknown {} else { check(false, "not .UnknownGroup") }
    check(try await bob.group(group: String(repeating: "0", count: 64)) == nil, "no such group")
    let notAdmin = await expectError("not_group_admin") { try await carol.removeGroupMember(group: g, member: d) }
    if case .NotGroupAdmin = notAdmin {} else { check(false, "not .NotGroupAdmin") }

    // Bob renames the group and makes carol an admin; carol sees both.
    try await bob.renameGroup(group: g, title: "team two")
    try await bob.setGroupAdmin(group: g, member: c, admin: true)
    while true {
        guard let now = try await carol.group(group: g) else { fatalError("carol's group") }
        if now.title == "team two" && now.members.contains(where: { $0.account == c && $0.role == .admin }) { break }
        _ = await waitFor(carol, groupChanged(g))
    }

    // Dave is removed: he learns it, and can no longer send to the group.
    try await bob.removeGroupMember(group: g, member: d)
    while try await dave.group(group: g)?.active != false {
        _ = await waitFor(dave, groupChanged(g))
    }
    try await waitForMembers(carol, g, [b, c])
    _ = await expectError("unknown_group") { _ = try await dave.sendGroupText(group: g, text: "still here?") }
    let after = try await bob.sendGroupText(group: g, text: "after dave")
    _ = await waitFor(carol, received("after dave"))
    _ = await waitFor(bob, sentEvent(after.id))
    let reply = try await carol.sendGroupText(group: g, text: "carol after dave")
    _ = await waitFor(bob, received("carol after dave"))
    _ = await waitFor(carol, sentEvent(reply.id))
    // Both were stored by the relay before bob writes to dave directly: once dave has that
    // message, anything of the group's sent to him would have come before it.
    var seen: [String] = []
    _ = try await bob.sendText(contact: d, text: "just to dave")
    _ = await waitFor(dave) { e in
        if case .messageReceived(let m) = e { seen.append(m.text) }
        return received("just to dave")(e)
    }
    check(seen == ["just to dave"], "dave got \(seen)")
    let daveHistory = try await dave.groupMessages(group: g, page: Page())
    check(daveHistory.map { $0.text } == ["hello team", "hi from carol"], "\(daveHistory)")
    check(daveHistory.allSatisfy { $0.group == g }, "\(daveHistory)")
    let history = try await carol.groupMessages(group: g, page: Page())
    check(history.map { $0.text } == ["hello team", "hi from carol", "after dave", "carol after dave"], "\(history)")
    let older = try await carol.groupMessages(group: g, page: Page(before: history[2].order, limit: 1))
    check(older.map { $0.text } == ["hi from carol"], "\(older)")

    // Carol leaves; bob sees her go.
    try await carol.leaveGroup(group: g)
    check(try await carol.group(group: g)?.active == false, "carol left")
    try await waitForMembers(bob, g, [b])
    await carol.shutdown()
    await dave.shutdown()
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
    // Every error case, provoked or constructed, with its code (errors.swift).
    try FileManager.default.createDirectory(atPath: dir + "/errors", withIntermediateDirectories: true)
    try await everyError(relay: relay, folder: dir + "/errors")
    // Live lists, send states and a restart (live.swift).
    try await liveLists(relay: relay, folder: dir + "/live")
    // Attachments, push registration and the notification extension (media.swift).
    try await media(relay: relay, folder: dir + "/media")

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
    // Alice's list gained a device: once Bob's client has seen the new list (before this
    // send or during it, as timing goes), his sends to her wait until he acknowledges her
    // new safety number, as an app would have him do.
    try await bob.acknowledgeIdentity(contact: a)
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

    try await groups(bob, opts)

    await alice2.shutdown()
    await alice.shutdown()
    await bob.shutdown()
    print("swift: all binding tests passed")
} catch {
    print("swift: unexpected error \(error)")
    exit(1)
}
