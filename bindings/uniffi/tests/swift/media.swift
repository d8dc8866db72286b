// Attachments, push registration and the notification extension in Swift, against the
// relay at $SOTTO_RELAY_URL (what media.py checks in Python):
// - Alice sends Bob a file from bytes (with progress) and one from a path; Bob downloads
//   them to bytes and to a path and gets them back exactly;
// - a cancelled upload and a missing file are typed errors;
// - Bob registers a push token and removes it;
// - while Bob's app runs, his notification extension is told the app is active; with the
//   app shut down, it fetches what Alice sent meanwhile, once, and returns what to show;
//   the app, reopened, holds that message once.
// Called from main.swift.

import Foundation

/// Every progress call, in order (they come on an SDK thread).
final class ProgressCalls: ProgressListener, @unchecked Sendable {
    private let lock = NSLock()
    private var calls: [(UInt64, UInt64)] = []

    func onProgress(done: UInt64, total: UInt64) {
        lock.lock()
        calls.append((done, total))
        lock.unlock()
    }

    func all() -> [(UInt64, UInt64)] {
        lock.lock()
        defer { lock.unlock() }
        return calls
    }
}

// (main.swift's helpers are local to its top-level code: this file has its own.)

/// The next message received with this text.
func receivedMessage(_ client: SottoClient, _ text: String) async -> Message {
    while true {
        guard let e = await client.nextEvent() else {
            require(false, "the event stream ended")
            fatalError()
        }
        if case .messageReceived(let m) = e, m.text == text { return m }
    }
}

/// Waits for the relay to take the message `id`.
func messageSent(_ client: SottoClient, _ id: String) async {
    while true {
        guard let e = await client.nextEvent() else {
            require(false, "the event stream ended")
            fatalError()
        }
        if case .messageSent(let sid, _) = e, sid == id { return }
    }
}

/// Runs `body`, which must fail with the error whose code is `code`.
func failsWith(_ code: String, _ body: () async throws -> Void) async {
    do {
        try await body()
    } catch let e as SottoError {
        require(e.code() == code, "expected \(code), got \(e)")
        return
    } catch {
        require(false, "expected SottoError with code \(code), got \(error)")
    }
    require(false, "expected SottoError with code \(code), got no error")
}

func media(relay: String, folder: String) async throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let keyA = randomKey()
    let keyB = randomKey()
    let pathA = folder + "/alice.db"
    let pathB = folder + "/bob.db"
    let opts = ClientOptions()
    let alice = try await SottoClient.createAccount(storePath: pathA, storeKey: keyA, relayUrl: relay, options: opts)
    var bob = try await SottoClient.createAccount(storePath: pathB, storeKey: keyB, relayUrl: relay, options: opts)
    let a = alice.accountId()
    let b = bob.accountId()
    _ = try await alice.addContact(contact: bob.contactLink())
    _ = try await bob.addContact(contact: a)
    let toBob = Conversation.direct(account: b)

    let photo = randomBytes(200_000)
    let progress = ProgressCalls()
    let info = AttachmentInfo(mediaType: "image/png", fileName: "cat.png", caption: "our cat", thumbnail: Data([0x89, 0x50, 0x4e, 0x47]))
    let item = try await alice.sendAttachmentBytes(conversation: toBob, bytes: photo, info: info, progress: progress, cancel: nil)
    require(item.attachment?.size == UInt64(photo.count) && item.attachment?.fileName == "cat.png", "\(item)")
    let calls = progress.all()
    require(!calls.isEmpty && calls.last!.0 == calls.last!.1, "\(calls)")
    let photoMessage = await receivedMessage(bob, "our cat")
    let photoKey = MessageKey(conversation: .direct(account: a), sender: a, id: photoMessage.id)
    let photoBack = try await bob.downloadAttachmentBytes(key: photoKey)
    require(photoBack == photo, "the photo came back changed")
    let reader = try await bob.openAttachment(key: photoKey)
    require(reader.ciphertextLen() > UInt64(photo.count), "\(reader.ciphertextLen())")
    var streamed = Data()
    while let piece = try await reader.nextChunk() {
        streamed.append(piece)
    }
    require(streamed == photo, "the photo read piece by piece came back changed")

    let source = folder + "/notes.txt"
    let notesText = String(repeating: "minutes of the meeting\n", count: 5000)
    try notesText.write(toFile: source, atomically: true, encoding: .utf8)
    _ = try await alice.sendAttachmentFile(
        conversation: toBob, path: source, info: AttachmentInfo(mediaType: "text/plain", caption: "notes"),
        progress: nil, cancel: nil)
    let notes = await receivedMessage(bob, "notes")
    let dest = folder + "/received.txt"
    try await bob.downloadAttachment(
        key: MessageKey(conversation: .direct(account: a), sender: a, id: notes.id), path: dest, progress: nil, cancel: nil)
    require(FileManager.default.contents(atPath: dest) == FileManager.default.contents(atPath: source), "the file came back changed")

    let cancel = CancelToken()
    cancel.cancel()
    await failsWith("cancelled") {
        _ = try await alice.sendAttachmentBytes(conversation: toBob, bytes: photo, info: AttachmentInfo(), progress: nil, cancel: cancel)
    }
    await failsWith("file") {
        _ = try await alice.sendAttachmentFile(
            conversation: toBob, path: folder + "/missing", info: AttachmentInfo(), progress: nil, cancel: nil)
    }

    try await bob.registerPush(service: .fcm, token: Data("fcm-registration-token".utf8))
    try await bob.unregisterPush()

    // While Bob's app runs, his extension has nothing to do.
    let ext = try await NotificationExtension.open(storePath: pathB, storeKey: keyB, options: opts)
    let busy = try await ext.fetch(maxWaitMs: 10_000)
    require(busy.appActive && busy.notifications.isEmpty, "\(busy)")
    // With the app shut down, the extension shows what arrived.
    await bob.shutdown()
    let sent = try await alice.sendText(contact: b, text: "are you there?")
    await messageSent(alice, sent.id)
    let fetched = try await ext.fetch(maxWaitMs: 10_000)
    require(fetched.complete && !fetched.appActive, "\(fetched)")
    require(fetched.notifications.map { $0.body } == ["are you there?"], "\(fetched)")
    require(fetched.notifications.map { $0.key.sender } == [a], "\(fetched)")
    // Fetched once: the next fetch finds nothing, and the app, reopened, holds it once.
    let again = try await ext.fetch(maxWaitMs: 5_000)
    require(again.notifications.isEmpty, "fetched twice: \(again)")
    bob = try await SottoClient.open(storePath: pathB, storeKey: keyB, options: ClientOptions(connect: false))
    let history = try await bob.messages(conversation: a, page: Page()).map { $0.text }
    require(history.filter { $0 == "are you there?" }.count == 1, "\(history)")
    await bob.shutdown()
    await alice.shutdown()
    print("swift: attachments, push registration and the notification extension")
}

func randomBytes(_ n: Int) -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<n).map { _ in UInt8.random(in: 0...255, using: &g) })
}
