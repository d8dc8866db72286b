// Kotlin benchmark of the sotto_ffi binding (docs/benchmarks.md, "Bindings"): the cost of a
// trivial call, and 1,000 messages from Alice to Bob through the relay at $SOTTO_RELAY_URL.
// Run by `SOTTO_BENCH=1 scripts/bindings.sh kotlin`.

import java.io.File
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.SottoClient
import uniffi.sotto_ffi.version

val CALLS = System.getenv("SOTTO_BENCH_CALLS")?.toInt() ?: 200_000
val MESSAGES = System.getenv("SOTTO_BENCH_MESSAGES")?.toInt() ?: 1000

inline fun perCallNs(f: () -> Unit): Double {
    // Warm the JIT first.
    repeat(CALLS / 10) { f() }
    val t0 = System.nanoTime()
    repeat(CALLS) { f() }
    return (System.nanoTime() - t0).toDouble() / CALLS
}

suspend fun count(client: SottoClient, n: Int, predicate: (Event) -> Boolean) {
    var got = 0
    while (got < n) {
        val e = client.nextEvent() ?: throw AssertionError("the event stream ended")
        if (predicate(e)) got++
    }
}

fun main() = runBlocking {
    val opts = ClientOptions()
    val alice = SottoClient.createAccount(File(DIR, "bench-a.db").path, newKey(), RELAY, opts)
    val bob = SottoClient.createAccount(File(DIR, "bench-b.db").path, newKey(), RELAY, opts)
    val a = alice.accountId()
    val b = bob.accountId()
    alice.addContact(b)
    bob.addContact(a)

    var sink = 0L
    val dev = perCallNs { sink += alice.deviceId().toLong() }
    val ver = perCallNs { sink += version().length }
    println("kotlin: trivial calls over $CALLS: deviceId() %.0f ns, version() %.0f ns (sink $sink)".format(dev, ver))

    withTimeout(300_000) {
        alice.sendText(b, "warm-up")
        count(bob, 1) { it is Event.MessageReceived }
        bob.sendText(a, "warm-up")
        count(alice, 1) { it is Event.MessageReceived }

        val t0 = System.nanoTime()
        val received = async { count(bob, MESSAGES) { it is Event.MessageReceived } }
        val sent = async { count(alice, MESSAGES) { it is Event.MessageSent } }
        for (i in 0 until MESSAGES) alice.sendText(b, "message $i")
        val queued = (System.nanoTime() - t0) / 1e9
        received.await()
        val tRecv = (System.nanoTime() - t0) / 1e9
        sent.await()
        val tSent = (System.nanoTime() - t0) / 1e9
        println(
            "kotlin: $MESSAGES messages: queued in %.2f s, all received by Bob in %.2f s (%.0f msg/s), all confirmed sent to Alice in %.2f s"
                .format(queued, tRecv, MESSAGES / tRecv, tSent),
        )
    }
    alice.shutdown()
    bob.shutdown()
    alice.close()
    bob.close()
}
