// Kotlin tests of the sotto_ffi binding against the relay at $SOTTO_RELAY_URL: two clients
// register, exchange messages both ways, read their history after reopening their stores,
// and see errors as typed exceptions; a group is created, talks, and loses a member, who
// gets nothing sent afterwards; every error case is checked by Errors.kt, the live lists
// and send states by Live.kt, attachments, push and the notification extension by
// Media.kt. Run by scripts/bindings.sh on the JVM with JNA.

import java.io.File
import java.security.SecureRandom
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.TimeoutCancellationException
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.EventListener
import uniffi.sotto_ffi.GroupRole
import uniffi.sotto_ffi.MessageStatus
import uniffi.sotto_ffi.Page
import uniffi.sotto_ffi.PendingJoin
import uniffi.sotto_ffi.SottoClient
import uniffi.sotto_ffi.SottoException

val RELAY: String = System.getenv("SOTTO_RELAY_URL") ?: error("SOTTO_RELAY_URL is not set")
val DIR: String = System.getenv("SOTTO_TEST_DIR") ?: error("SOTTO_TEST_DIR is not set")

/** Failsafe only: every wait returns as soon as the event arrives. */
const val TIMEOUT_MS = 30_000L

fun newKey(): ByteArray = ByteArray(32).also { SecureRandom().nextBytes(it) }

fun check(ok: Boolean, what: () -> String) {
    if (!ok) throw AssertionError(what())
}

/** Runs [block] under the failsafe timeout. A timeout names the wait that ran out: the
 *  trace taken here, before the first suspension, still holds the caller's line. */
suspend fun <T> failsafe(block: suspend () -> T): T {
    val site = Throwable("the wait that timed out")
    return try {
        withTimeout(TIMEOUT_MS) { block() }
    } catch (e: TimeoutCancellationException) {
        throw AssertionError("no matching event within $TIMEOUT_MS ms", site)
    }
}

suspend fun waitFor(client: SottoClient, predicate: (Event) -> Boolean): Event =
    failsafe {
        while (true) {
            val e = client.nextEvent() ?: throw AssertionError("the event stream ended")
            if (predicate(e)) return@failsafe e
        }
        @Suppress("UNREACHABLE_CODE")
        throw AssertionError("unreachable")
    }

/** Like [waitFor], but every wait is cancelled after 20 ms and started again, and the event
 *  is taken once a wait saw it ready: a cancelled wait must not lose the event. */
suspend fun waitForSliced(client: SottoClient, predicate: (Event) -> Boolean): Event =
    failsafe {
        while (true) {
            val ready = withTimeoutOrNull(20) { client.waitEvent() } ?: continue
            if (!ready) throw AssertionError("the event stream ended")
            val e = client.takeEvent() ?: throw AssertionError("a ready event was not there to take")
            if (predicate(e)) return@failsafe e
        }
        @Suppress("UNREACHABLE_CODE")
        throw AssertionError("unreachable")
    }

fun received(text: String): (Event) -> Boolean = { it is Event.MessageReceived && it.message.text == text }

fun groupChanged(group: String): (Event) -> Boolean = { it is Event.GroupChanged && it.group == group }

/** Waits until [client] holds [group] with exactly these member accounts. */
suspend fun waitForMembers(client: SottoClient, group: String, members: List<String>) {
    while (client.group(group)!!.members.map { it.account }.sorted() != members.sorted()) {
        waitFor(client, groupChanged(group))
    }
}

suspend inline fun <reified E : SottoException> expectError(block: () -> Unit): E {
    try {
        block()
    } catch (e: SottoException) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e")
    }
    throw AssertionError("expected ${E::class.simpleName}")
}

fun main() = runBlocking {
    // Every error case, provoked or constructed, with its code (Errors.kt).
    everyError(RELAY, File(DIR, "errors").also { it.mkdirs() })
    // Live lists, send states and a restart (Live.kt).
    liveLists(RELAY, File(DIR, "live"))
    // Attachments, push registration and the notification extension (Media.kt).
    media(RELAY, File(DIR, "media"))

    val keyA = newKey()
    val keyB = newKey()
    val pathA = File(DIR, "alice.db").path
    val pathB = File(DIR, "bob.db").path
    val opts = ClientOptions()

    // Alice's receipts wait ten minutes in this first session (shutdown keeps them queued).
    val slowReceipts = ClientOptions(receiptDelayMinMs = 600_000uL, receiptDelayMaxMs = 600_001uL)
    var alice = SottoClient.createAccount(pathA, keyA, RELAY, slowReceipts)
    var bob = SottoClient.createAccount(pathB, keyB, RELAY, opts)
    val a = alice.accountId()
    val b = bob.accountId()
    check(a.length == 52 && a != b) { "account ids $a $b" }
    check(alice.contactLink().startsWith("sotto:$a.") && alice.contactLink().length == 6 + 52 + 1 + 64) { alice.contactLink() }
    check(alice.deviceId() == 1u) { "device id ${alice.deviceId()}" }

    check(alice.addContact(bob.contactLink()) == b) { "addContact" }
    check(bob.addContact(a) == a) { "addContact" }

    val sent = alice.sendText(b, "hello bob")
    check(sent.status == MessageStatus.Queued && sent.conversation == b) { "$sent" }
    val got = (waitFor(bob, received("hello bob")) as Event.MessageReceived).message
    check(got.senderAccount == a && got.senderDevice == 1u && got.id == sent.id) { "$got" }
    check(got.status == MessageStatus.Received && got.conversation == a) { "$got" }
    waitFor(alice) { it is Event.MessageSent && it.id == sent.id }

    val reply = bob.sendText(a, "hi alice")
    waitForSliced(alice, received("hi alice"))
    waitFor(bob) { it is Event.MessageSent && it.id == reply.id }

    val snA = alice.safetyNumber(b)
    check(snA == bob.safetyNumber(a) && snA.split(" ").size == 12) { snA }

    // Errors are typed exceptions with a stable code.
    val bad = expectError<SottoException.BadContact> { alice.sendText("not an account", "x") }
    check(bad.code() == "bad_contact" && !bad.isRetryable()) { bad.code() }
    expectError<SottoException.InvalidArgument> { SottoClient.open(pathA, ByteArray(5), opts) }
    expectError<SottoException.AccountExists> { SottoClient.createAccount(pathA, keyA, RELAY, opts) }

    // History after reopening the stores.
    alice.shutdown()
    bob.shutdown()
    expectError<SottoException.Closed> { alice.conversations() }
    val wrong = expectError<SottoException.WrongStoreKey> { SottoClient.open(pathA, newKey(), opts) }
    check(wrong.code() == "wrong_store_key") { wrong.code() }
    alice.close()
    bob.close()

    alice = SottoClient.open(pathA, keyA, ClientOptions(connect = false))
    check(alice.accountId() == a) { "reopened account" }
    check(alice.conversations() == listOf(b)) { "conversations" }
    val history = alice.messages(b, Page())
    check(history.map { it.text to it.senderAccount } == listOf("hello bob" to a, "hi alice" to b)) { "$history" }
    check(history[0].status == MessageStatus.Sent || history[0].status == MessageStatus.Delivered) { "$history" }
    check(history[1].status == MessageStatus.Received) { "$history" }
    val older = alice.messages(b, Page(before = history[1].order, limit = 10u))
    check(older.map { it.text } == listOf("hello bob")) { "$older" }
    // Her receipt for bob's reply was still waiting: shutdown kept it in the outbox.
    check(alice.outboxLen() == 1uL) { "outbox" }
    alice.shutdown()
    alice.close()

    // Back online, the conversation goes on; bob listens through a callback interface.
    bob = SottoClient.open(pathB, keyB, opts)
    alice = SottoClient.open(pathA, keyA, opts)
    val events = Channel<Event>(Channel.UNLIMITED)
    val subscription = bob.subscribe(
        object : EventListener {
            override fun onEvent(event: Event) {
                events.trySend(event) // on an SDK thread
            }
        },
    )
    alice.sendText(b, "after reopening")
    failsafe {
        while (!received("after reopening")(events.receive())) {}
    }
    subscription.cancel()
    subscription.close()
    check(bob.messages(a, Page()).map { it.text } == listOf("hello bob", "hi alice", "after reopening")) { "bob's history" }

    // Device linking: alice's second device asks to join with the code her first device
    // shows; her first device shows its name and fingerprint and she confirms (without the
    // account key); bob's next message reaches both.
    val code = alice.linkNewDevice()
    val pending = PendingJoin.startJoin(File(DIR, "alice2.db").path, newKey(), RELAY, code, "alice phone", opts)
    check(pending.deviceId() == 2u) { "asked for ${pending.deviceId()}" }
    val req = waitFor(alice) { it is Event.LinkRequested } as Event.LinkRequested
    check(req.deviceName == "alice phone") { req.deviceName }
    check(req.fingerprint == pending.fingerprint()) { "fingerprints differ" }
    expectError<SottoException.UnknownLinkRequest> { alice.confirmLink(req.id xor 1uL, false) }
    alice.confirmLink(req.id, false)
    val alice2 = pending.waitJoined()
    check(alice2.accountId() == a && alice2.deviceId() == 2u) { "joined as ${alice2.deviceId()}" }
    check(alice.canManageDevices() && !alice2.canManageDevices()) { "list key" }
    expectError<SottoException.NoListKey> { alice2.linkNewDevice() }
    check(alice.devicesOf(a).sorted() == listOf(1u, 2u)) { "alice's devices" }
    // Alice's list gained a device: once Bob's client has seen the new list (before this
    // send or during it, as timing goes), his sends to her wait until he acknowledges her
    // new safety number, as an app would have him do.
    bob.acknowledgeIdentity(a)
    bob.sendText(a, "to both devices")
    waitFor(alice, received("to both devices"))
    waitFor(alice2, received("to both devices"))
    val rk = alice.exportRecoveryKey()
    check(rk.startsWith("sotto-recovery:")) { "recovery key" }
    check(!alice.hasAccountKey()) { "the recovery key goes out once" }
    expectError<SottoException.NoAccountKey> { alice.exportRecoveryKey() }
    alice2.recoverAccount(rk)
    check(alice2.canManageDevices() && !alice2.hasAccountKey()) { "recovered" }
    alice2.removeDevice(1u)
    check(alice2.devicesOf(a) == listOf(2u)) { "alice's devices after removal" }
    pending.close()

    groups(bob, opts)

    alice2.shutdown()
    alice.shutdown()
    bob.shutdown()
    alice2.close()
    alice.close()
    bob.close()
    println("kotlin: all binding tests passed")
}

/** Bob creates a group with carol and dave (his contacts, added by link), all three talk,
 *  then bob removes dave: carol still gets what is sent, dave gets nothing more. */
suspend fun groups(bob: SottoClient, opts: ClientOptions) {
    val b = bob.accountId()
    val carol = SottoClient.createAccount(File(DIR, "carol.db").path, newKey(), RELAY, opts)
    val dave = SottoClient.createAccount(File(DIR, "dave.db").path, newKey(), RELAY, opts)
    val c = carol.accountId()
    val d = dave.accountId()
    check(bob.addContact(carol.contactLink()) == c && bob.addContact(dave.contactLink()) == d) { "addContact" }

    expectError<SottoException.BadContact> { bob.createGroup("team", listOf(c, "not an account")) }
    val g = bob.createGroup("team", listOf(c, d))
    check(g.length == 64 && g.all { it in "0123456789abcdef" }) { "group id $g" }
    val info = bob.group(g)!!
    check(info.id == g && info.title == "team" && info.active && info.version == 0uL) { "$info" }
    val roles = info.members.associate { it.account to it.role }
    check(roles == mapOf(b to GroupRole.ADMIN, c to GroupRole.MEMBER, d to GroupRole.MEMBER)) { "$roles" }
    check(bob.groups().map { it.id } == listOf(g)) { "bob's groups" }
    // The members join when bob's welcome arrives.
    waitFor(carol, groupChanged(g))
    waitFor(dave, groupChanged(g))
    check(carol.groups().map { Triple(it.id, it.title, it.active) } == listOf(Triple(g, "team", true))) { "carol's groups" }

    // A group message reaches every other member once, with the group id.
    val sent = bob.sendGroupText(g, "hello team")
    check(sent.group == g && sent.conversation == g && sent.status == MessageStatus.Queued) { "$sent" }
    for (member in listOf(carol, dave)) {
        val m = (waitFor(member, received("hello team")) as Event.MessageReceived).message
        check(m.id == sent.id && m.group == g && m.conversation == g) { "$m" }
        check(m.senderAccount == b && m.status == MessageStatus.Received) { "$m" }
    }
    waitFor(bob) { it is Event.MessageSent && it.id == sent.id && it.conversation == g }
    // Carol writes too (awaited with reads cancelled every 20 ms on bob's side).
    carol.sendGroupText(g, "hi from carol")
    val got = (waitForSliced(bob, received("hi from carol")) as Event.MessageReceived).message
    check(got.group == g && got.senderAccount == c) { "$got" }
    waitFor(dave, received("hi from carol"))

    // Errors: a malformed group id, a group this account is not in, a change by a non-admin.
    val badId = expectError<SottoException.BadGroupId> { bob.sendGroupText("not a group", "x") }
    check(badId.code() == "bad_group_id" && !badId.isRetryable()) { badId.code() }
    val unknown = expectError<SottoException.UnknownGroup> { bob.sendGroupText("0".repeat(64), "x") }
    check(unknown.code() == "unknown_group") { unknown.code() }
    check(bob.group("0".repeat(64)) == null) { "no such group" }
    val notAdmin = expectError<SottoException.NotGroupAdmin> { carol.removeGroupMember(g, d) }
    check(notAdmin.code() == "not_group_admin") { notAdmin.code() }

    // Bob renames the group and makes carol an admin; carol sees both.
    bob.renameGroup(g, "team two")
    bob.setGroupAdmin(g, c, true)
    while (true) {
        val now = carol.group(g)!!
        if (now.title == "team two" && now.members.any { it.account == c && it.role == GroupRole.ADMIN }) break
        waitFor(carol, groupChanged(g))
    }

    // Dave is removed: he learns it, and can no longer send to the group.
    bob.removeGroupMember(g, d)
    while (dave.group(g)!!.active) waitFor(dave, groupChanged(g))
    waitForMembers(carol, g, listOf(b, c))
    expectError<SottoException.UnknownGroup> { dave.sendGroupText(g, "still here?") }
    val after = bob.sendGroupText(g, "after dave")
    waitFor(carol, received("after dave"))
    waitFor(bob) { it is Event.MessageSent && it.id == after.id }
    val reply = carol.sendGroupText(g, "carol after dave")
    waitFor(bob, received("carol after dave"))
    waitFor(carol) { it is Event.MessageSent && it.id == reply.id }
    // Both were stored by the relay before bob writes to dave directly: once dave has that
    // message, anything of the group's sent to him would have come before it.
    val seen = mutableListOf<String>()
    bob.sendText(d, "just to dave")
    waitFor(dave) {
        if (it is Event.MessageReceived) seen += it.message.text
        received("just to dave")(it)
    }
    check(seen == listOf("just to dave")) { "dave got $seen" }
    val daveHistory = dave.groupMessages(g, Page())
    check(daveHistory.map { it.text to it.group } == listOf("hello team" to g, "hi from carol" to g)) { "$daveHistory" }
    val history = carol.groupMessages(g, Page())
    check(history.map { it.text } == listOf("hello team", "hi from carol", "after dave", "carol after dave")) { "$history" }
    val older = carol.groupMessages(g, Page(before = history[2].order, limit = 1u))
    check(older.map { it.text } == listOf("hi from carol")) { "$older" }

    // Carol leaves; bob sees her go.
    carol.leaveGroup(g)
    check(!carol.group(g)!!.active) { "carol left" }
    waitForMembers(bob, g, listOf(b))
    carol.shutdown()
    dave.shutdown()
    carol.close()
    dave.close()
}
