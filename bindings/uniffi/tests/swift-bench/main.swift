// Swift benchmark of the sotto_ffi binding (docs/benchmarks.md, "Bindings"): the cost of a
// trivial call, and 1,000 messages from Alice to Bob through the relay at $SOTTO_RELAY_URL.
// Run by `SOTTO_BENCH=1 scripts/bindings.sh swift`.

import Foundation

let env = ProcessInfo.processInfo.environment
guard let relay = env["SOTTO_RELAY_URL"], let dir = env["SOTTO_TEST_DIR"] else {
    fatalError("SOTTO_RELAY_URL and SOTTO_TEST_DIR must be set")
}
let calls = Int(env["SOTTO_BENCH_CALLS"] ?? "") ?? 200_000
let messages = Int(env["SOTTO_BENCH_MESSAGES"] ?? "") ?? 1_000

// Failsafe only: every wait returns as soon as the event arrives.
Task.detached {
    try? await Task.sleep(nanoseconds: 300 * 1_000_000_000)
    print("swift: benchmark timed out")
    exit(1)
}

func newKey() -> Data {
    var g = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) })
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func perCallNs(_ f: () -> Void) -> Double {
    let t0 = now()
    for _ in 0..<calls { f() }
    return (now() - t0) / Double(calls) * 1e9
}

@Sendable func count(_ client: SottoClient, _ n: Int, _ predicate: (Event) -> Bool) async {
    var got = 0
    while got < n {
        guard let e = await client.nextEvent() else {
            print("swift: the event stream ended")
            exit(1)
        }
        if predicate(e) { got += 1 }
    }
}

@Sendable func isReceived(_ e: Event) -> Bool {
    if case .messageReceived = e { return true }
    return false
}

@Sendable func isSent(_ e: Event) -> Bool {
    if case .messageSent = e { return true }
    return false
}

do {
    let opts = ClientOptions()
    let alice = try await SottoClient.createAccount(
        storePath: dir + "/bench-a.db", storeKey: newKey(), relayUrl: relay, options: opts)
    let bob = try await SottoClient.createAccount(
        storePath: dir + "/bench-b.db", storeKey: newKey(), relayUrl: relay, options: opts)
    let a = alice.accountId()
    let b = bob.accountId()
    _ = try await alice.addContact(contact: b)
    _ = try await bob.addContact(contact: a)

    var sink: UInt32 = 0
    var text = ""
    // Warm-up, then the timed loops.
    for _ in 0..<20_000 { sink &+= alice.deviceId(); text = version() }
    let dev = perCallNs { sink &+= alice.deviceId() }
    let ver = perCallNs { text = version() }
    print(String(format: "swift: trivial calls over %d: deviceId() %.0f ns, version() %.0f ns (%u %@)",
                 calls, dev, ver, sink % 2, text.isEmpty ? "-" : "v"))

    // Warm-up: sessions exist both ways before timing.
    _ = try await alice.sendText(contact: b, text: "warm-up")
    await count(bob, 1, isReceived)
    _ = try await bob.sendText(contact: a, text: "warm-up")
    await count(alice, 1, isReceived)

    let t0 = now()
    async let received: Void = count(bob, messages, isReceived)
    async let sent: Void = count(alice, messages, isSent)
    for i in 0..<messages {
        _ = try await alice.sendText(contact: b, text: "message \(i)")
    }
    let queued = now() - t0
    await received
    let tRecv = now() - t0
    await sent
    let tSent = now() - t0
    print(String(format: "swift: %d messages: queued in %.2f s, all received by Bob in %.2f s (%.0f msg/s), "
                 + "all confirmed sent to Alice in %.2f s", messages, queued, tRecv, Double(messages) / tRecv, tSent))
    await alice.shutdown()
    await bob.shutdown()
} catch {
    print("swift: benchmark failed: \(error)")
    exit(1)
}
