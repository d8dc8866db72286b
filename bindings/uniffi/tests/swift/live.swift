// Live lists and the chat API in Swift, against the relay at $SOTTO_RELAY_URL:
// - a timeline subscription sees a Reset, then diffs for a received message, its edit and
//   a reaction to it;
// - a message's send state moves queued -> (sending ->) sent -> delivered -> read (the peer marks it
//   read), as the sender's timeline shows it;
// - restart: the receiver's client is shut down while 30 messages arrive and reopened from
//   the same store, and every message shows exactly once. This is a shutdown and reopen in
//   one process, not a killed process: the Python test (live.py) kills its receiver with
//   SIGKILL.
// Called from main.swift; uses errors.swift's helpers (require, randomKey, nextEvent).

import Foundation

/// A timeline kept up to date by its listener, as an app keeps the list its UI shows.
final class LiveTimeline: TimelineListener, @unchecked Sendable {
    private let lock = NSLock()
    private var items: [TimelineItem] = []
    private var batches: [[TimelineDiff]] = []

    func onUpdate(diffs: [TimelineDiff]) {  // on an SDK thread
        lock.lock()
        defer { lock.unlock() }
        batches.append(diffs)
        for d in diffs {
            switch d {
            case .reset(let all): items = all
            case .insert(let index, let item): items.insert(item, at: Int(index))
            case .update(let index, let item): items[Int(index)] = item
            case .remove(let index): items.remove(at: Int(index))
            }
        }
    }

    func current() -> [TimelineItem] {
        lock.lock()
        defer { lock.unlock() }
        return items
    }

    func allDiffs() -> [TimelineDiff] {
        lock.lock()
        defer { lock.unlock() }
        return batches.flatMap { $0 }
    }

    func firstBatch() -> [TimelineDiff]? {
        lock.lock()
        defer { lock.unlock() }
        return batches.first
    }

    /// Waits until `predicate` holds for the list (polled every 10 ms; 30 s at most).
    @discardableResult
    func until(_ what: String, _ predicate: ([TimelineItem]) -> Bool) async -> [TimelineItem] {
        let deadline = Date().addingTimeInterval(30)
        while true {
            let now = current()
            if predicate(now) { return now }
            require(Date() < deadline, "timed out waiting for \(what): \(now)")
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }
}

func item(_ items: [TimelineItem], _ id: String) -> TimelineItem? {
    return items.first { $0.key.id == id }
}

let stateOrder: [SendState] = [.queued, .sending, .sent, .delivered, .read]

func atLeast(_ id: String, _ state: SendState) -> ([TimelineItem]) -> Bool {
    return { items in
        guard let s = item(items, id)?.sendState, let have = stateOrder.firstIndex(of: s),
            let want = stateOrder.firstIndex(of: state)
        else { return false }
        return have >= want
    }
}

func liveLists(relay: String, folder: String) async throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try await timelineAndSendStates(relay: relay, folder: folder)
    try await shutdownAndReopen(relay: relay, folder: folder)
}

func timelineAndSendStates(relay: String, folder: String) async throws {
    let opts = ClientOptions()
    let gina = try await SottoClient.createAccount(
        storePath: folder + "/gina.db", storeKey: randomKey(), relayUrl: relay, options: opts)
    let hank = try await SottoClient.createAccount(
        storePath: folder + "/hank.db", storeKey: randomKey(), relayUrl: relay, options: opts)
    let g = gina.accountId()
    let h = hank.accountId()
    _ = try await gina.addContact(contact: hank.contactLink())
    _ = try await hank.addContact(contact: gina.contactLink())
    let toHank = Conversation.direct(account: h)
    let toGina = Conversation.direct(account: g)

    // A reset first, then diffs for a received message, its edit and a reaction.
    let live = LiveTimeline()
    let timeline = try gina.timeline(conversation: toHank, window: 50)
    let sub = try timeline.subscribe(listener: live)
    await live.until("the first callback") { _ in live.firstBatch() != nil }
    if case .reset = live.firstBatch()?.first {} else { require(false, "not a reset first: \(String(describing: live.firstBatch()))") }
    let first = try await hank.sendMessage(conversation: toGina, text: "first")
    require(first.sendState == .queued && first.key.sender == h, "\(first)")
    await live.until("the received message") { item($0, first.key.id) != nil }
    guard let got = item(live.current(), first.key.id) else { fatalError() }
    require(got.text == "first" && got.sendState == nil && got.key.conversation == toHank, "\(got)")
    require(
        live.allDiffs().contains {
            if case .insert(_, let i) = $0 { return i.key.id == first.key.id } else { return false }
        }, "no insert")
    try await hank.edit(key: first.key, text: "first, edited")
    await live.until("the edit") { item($0, first.key.id)?.text == "first, edited" }
    require(item(live.current(), first.key.id)?.editedAtMs != nil, "edited_at_ms")
    try await hank.react(key: first.key, emoji: "\u{1F44D}")
    await live.until("the reaction") { item($0, first.key.id)?.reactions.isEmpty == false }
    let reactions = item(live.current(), first.key.id)?.reactions ?? []
    require(reactions.count == 1 && reactions[0].byAccount == h && reactions[0].emoji == "\u{1F44D}", "\(reactions)")
    let updates = live.allDiffs().filter { if case .update = $0 { return true } else { return false } }
    require(updates.count >= 2, "updates")
    let fresh = try await timeline.snapshot()
    require(live.current() == fresh, "the live list differs from a snapshot")

    // A send's state: queued (the local echo), sent, delivered, read.
    let ping = try await gina.sendMessage(conversation: toHank, text: "ping")
    require(ping.sendState == .queued && ping.text == "ping", "\(ping)")
    await live.until("sent", atLeast(ping.key.id, .sent))
    _ = await nextEvent(hank) {
        if case .messageReceived(let m) = $0 { return m.id == ping.key.id } else { return false }
    }
    try await hank.sendReceiptsNow()
    await live.until("delivered", atLeast(ping.key.id, .delivered))
    try await hank.markRead(conversation: toGina)
    try await hank.sendReceiptsNow()
    await live.until("read", atLeast(ping.key.id, .read))
    // Every state the diffs carried for it, in order.
    var states: [SendState?] = [ping.sendState]
    for d in live.allDiffs() {
        let items: [TimelineItem]
        switch d {
        case .reset(let all): items = all
        case .insert(_, let i), .update(_, let i): items = [i]
        case .remove: items = []
        }
        for i in items where i.key.id == ping.key.id && i.sendState != states.last! { states.append(i.sendState) }
    }
    // Sending (handed to the relay, no answer yet) may be too short to reach a batch.
    let seen = states.filter { $0 != .sending }
    require(seen == stateOrder.filter { $0 != .sending }.map { Optional($0) }, "send states \(states)")
    _ = await nextEvent(gina) {
        if case .read(_, let ids, let byAccount, _) = $0 { return ids.contains(ping.key.id) && byAccount == h }
        return false
    }
    sub.cancel()

    // The conversation lists: Gina's shows the ping last; Hank read everything.
    let mine = try await gina.conversationList().snapshot()
    require(mine.count == 1 && mine[0].conversation == toHank && mine[0].lastMessage?.text == "ping", "\(mine)")
    let his = try await hank.conversationList().snapshot()
    require(his.count == 1 && his[0].conversation == toGina && his[0].unread == 0, "\(his)")
    await gina.shutdown()
    await hank.shutdown()
}

func shutdownAndReopen(relay: String, folder: String) async throws {
    let opts = ClientOptions()
    let path = folder + "/ivy.db"
    let key = randomKey()
    var ivy = try await SottoClient.createAccount(storePath: path, storeKey: key, relayUrl: relay, options: opts)
    let jack = try await SottoClient.createAccount(
        storePath: folder + "/jack.db", storeKey: randomKey(), relayUrl: relay, options: opts)
    let i = ivy.accountId()
    let j = jack.accountId()
    _ = try await ivy.addContact(contact: jack.contactLink())
    _ = try await jack.addContact(contact: ivy.contactLink())

    let texts = (0..<30).map { String(format: "m%02d", $0) }
    for t in texts { _ = try await jack.sendMessage(conversation: .direct(account: i), text: t) }
    // Shut down once a few have arrived: others are on their way or still at the relay.
    var seen = 0
    _ = await nextEvent(ivy) {
        if case .messageReceived = $0 { seen += 1 }
        return seen >= 5
    }
    await ivy.shutdown()

    ivy = try await SottoClient.open(storePath: path, storeKey: key, options: opts)
    let live = LiveTimeline()
    let timeline = try ivy.timeline(conversation: .direct(account: j), window: 100)
    let sub = try timeline.subscribe(listener: live)
    await live.until("every message") { $0.count >= texts.count }
    _ = await nextEvent(ivy) { if case .caughtUp = $0 { return true } else { return false } }
    let items = try await timeline.snapshot()
    require(live.current() == items, "the live list differs from a snapshot")
    require(items.map { $0.text }.sorted() == texts, "\(items.map { $0.text })")
    require(Set(items.map { $0.key.id }).count == texts.count, "a message shows twice")
    let list = try await ivy.conversationList().snapshot()
    require(
        list.count == 1 && list[0].conversation == .direct(account: j) && list[0].unread == UInt32(texts.count),
        "\(list)")
    sub.cancel()
    await ivy.shutdown()
    await jack.shutdown()
    print("swift: live lists, send states and a restart with \(texts.count) messages passed")
}
