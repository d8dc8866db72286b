// Every SottoException case, with its stable code() and isRetryable(), in Kotlin.
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
// TestSotto.kt's main.

import java.io.File
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Conversation
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.MessageKey
import uniffi.sotto_ffi.PendingJoin
import uniffi.sotto_ffi.SottoClient
import uniffi.sotto_ffi.SottoException

/** Every case's stable code and whether it is retryable (null: the relay's code decides);
 *  the same table is in lib.rs's unit tests and the Swift and Python tests. */
val ERROR_CODES: Map<String, Pair<String, Boolean?>> = mapOf(
    "WrongStoreKey" to ("wrong_store_key" to false),
    "StoreConflict" to ("store_conflict" to true),
    "Store" to ("store" to false),
    "Network" to ("network" to true),
    "Relay" to ("relay" to null),
    "Transport" to ("transport" to false),
    "Refused" to ("refused" to false),
    "DeviceList" to ("device_list" to false),
    "AccountExists" to ("account_exists" to false),
    "NoAccount" to ("no_account" to false),
    "BadContact" to ("bad_contact" to false),
    "UnknownContact" to ("unknown_contact" to false),
    "BadLinkCode" to ("bad_link_code" to false),
    "Link" to ("link" to false),
    "NoAccountKey" to ("no_account_key" to false),
    "NoListKey" to ("no_list_key" to false),
    "NeedsRecoveryKey" to ("needs_recovery_key" to false),
    "BadRecoveryKey" to ("bad_recovery_key" to false),
    "UnknownLinkRequest" to ("unknown_link_request" to false),
    "LinkTimeout" to ("link_timeout" to false),
    "BadGroupId" to ("bad_group_id" to false),
    "UnknownGroup" to ("unknown_group" to false),
    "NotGroupAdmin" to ("not_group_admin" to false),
    "Group" to ("group" to false),
    "SenderKey" to ("sender_key" to false),
    "InvalidArgument" to ("invalid_argument" to false),
    "Closed" to ("closed" to false),
    "Internal" to ("internal" to false),
    "Entropy" to ("entropy" to false),
    "UnknownMessage" to ("unknown_message" to false),
    "NotAuthor" to ("not_author" to false),
    "NotQueued" to ("not_queued" to false),
    "Blocked" to ("blocked" to false),
    "IdentityUnacknowledged" to ("identity_unacknowledged" to false),
    "TooLong" to ("too_long" to false),
    "TimerTooLong" to ("timer_too_long" to false),
    "DeviceInUse" to ("device_in_use" to true),
    "AttachmentCorrupt" to ("attachment_corrupt" to false),
    "Cancelled" to ("cancelled" to false),
    "File" to ("file" to false),
)

class SeenErrors {
    val provoked = mutableSetOf<String>()
    val constructed = mutableSetOf<String>()

    fun record(e: SottoException, retryable: Boolean? = null, provokedByCall: Boolean = true): SottoException {
        val name = e.javaClass.simpleName
        val (code, fixed) = ERROR_CODES[name] ?: throw AssertionError("no code for $name")
        val expected = fixed ?: retryable
        check(e.code() == code) { "$name: code() is ${e.code()}, not $code" }
        check(e.isRetryable() == expected) { "$name: isRetryable() is ${e.isRetryable()}" }
        (if (provokedByCall) provoked else constructed).add(name)
        return e
    }

    suspend inline fun <reified E : SottoException> expect(retryable: Boolean? = null, block: () -> Unit): E {
        try {
            block()
        } catch (e: SottoException) {
            if (e !is E) throw AssertionError("expected ${E::class.simpleName}, got $e")
            record(e, retryable)
            return e
        }
        throw AssertionError("expected ${E::class.simpleName}")
    }
}

suspend fun everyError(relay: String, folder: File) {
    val cases = SottoException::class.java.declaredClasses
        .filter { SottoException::class.java.isAssignableFrom(it) }
        .map { it.simpleName }
        .toSet()
    check(cases == ERROR_CODES.keys) { "cases differ from the table: ${cases.symmetricDifference(ERROR_CODES.keys)}" }
    val seen = SeenErrors()
    val opts = ClientOptions()
    val key = newKey()
    val path = File(folder, "erin.db").path
    fun newPath(name: String) = File(folder, name).path

    // The store and its key.
    seen.expect<SottoException.InvalidArgument> { SottoClient.open(path, ByteArray(5), opts) }
    seen.expect<SottoException.NoAccount> { SottoClient.open(newPath("none.db"), key, opts) }
    seen.expect<SottoException.Store> { SottoClient.open(folder.path, key, opts) } // a directory
    // The relay URL and the network.
    seen.expect<SottoException.Transport> {
        SottoClient.createAccount(newPath("t.db"), key, "ftp://relay.example", opts)
    }
    seen.expect<SottoException.Network> { SottoClient.createAccount(newPath("n.db"), key, "http://127.0.0.1:1", opts) }

    val erin = SottoClient.createAccount(path, key, relay, opts)
    val me = erin.accountId()
    seen.expect<SottoException.AccountExists> { SottoClient.createAccount(path, key, relay, opts) }

    // Contacts: an id nobody registered (the same id with another first character).
    val stranger = (if (me[0] == 'a') "b" else "a") + me.substring(1)
    seen.expect<SottoException.BadContact> { erin.sendText("not an account", "x") }
    seen.expect<SottoException.UnknownContact> { erin.safetyNumber(stranger) }
    val relayError = seen.expect<SottoException.Relay>(retryable = false) { erin.addContact(stranger) }
    check(relayError.status == 404.toUShort() && relayError.relayCode == 20.toUShort()) { "$relayError" }
    check(relayError.relayCodeName == "UNKNOWN_ACCOUNT" && !relayError.retryable) { "$relayError" }
    seen.expect<SottoException.Refused> { erin.sendText(me, "to myself") }
    val inUse = seen.expect<SottoException.DeviceInUse> { SottoClient.open(path, key, opts) }
    check(inUse.role == "app") { "$inUse" }

    // Chat, with Frank: a contact both ways.
    val frank = SottoClient.createAccount(newPath("frank.db"), newKey(), relay, opts)
    val f = erin.addContact(frank.contactLink())
    frank.addContact(erin.contactLink())
    val toFrank = Conversation.Direct(f)
    val tooLong = seen.expect<SottoException.TooLong> { erin.sendMessage(toFrank, "x".repeat(64 * 1024 + 1)) }
    check(tooLong.len == (64uL * 1024uL + 1uL) && tooLong.max == 64uL * 1024uL) { "$tooLong" }
    val timer = seen.expect<SottoException.TimerTooLong> { erin.setTimer(toFrank, 400u * 24u * 3600u) }
    check(timer.maxS == 366u * 24u * 3600u) { "$timer" }
    val mine = erin.sendMessage(toFrank, "hi frank")
    seen.expect<SottoException.NotQueued> { erin.retry(mine.key) } // it has not failed
    val nothing = MessageKey(toFrank, me, "00000000-0000-7000-8000-000000000000")
    seen.expect<SottoException.UnknownMessage> { erin.edit(nothing, "x") }
    frank.sendMessage(Conversation.Direct(me), "hi erin")
    val theirs = (waitFor(erin, received("hi erin")) as Event.MessageReceived).message
    seen.expect<SottoException.NotAuthor> { erin.edit(MessageKey(toFrank, theirs.senderAccount, theirs.id), "x") }
    erin.block(f)
    seen.expect<SottoException.Blocked> { erin.sendMessage(toFrank, "blocked") }
    erin.unblock(f)

    // Devices: a second device that is given the list key.
    seen.expect<SottoException.BadLinkCode> {
        PendingJoin.startJoin(newPath("x.db"), newKey(), relay, "sotto-link:nonsense", "x", opts)
    }
    val code = erin.linkNewDevice()
    val pending = PendingJoin.startJoin(newPath("erin2.db"), newKey(), relay, code, "erin 2", opts)
    val req = waitFor(erin) { it is Event.LinkRequested } as Event.LinkRequested
    seen.expect<SottoException.UnknownLinkRequest> { erin.confirmLink(req.id xor 1uL, true) }
    erin.confirmLink(req.id, true)
    val erin2 = pending.waitJoined()
    seen.expect<SottoException.Closed> { pending.waitJoined() } // callable once
    pending.close()
    // Frank's next send learns Erin's new device (the relay answers with her device list):
    // her safety number changed, and his sends wait for him to acknowledge it. (The SDK does
    // not emit IdentityChanged for it yet: DeviceListChanged is awaited.)
    frank.sendMessage(Conversation.Direct(me), "after the second device")
    waitFor(frank) { it is Event.DeviceListChanged && it.account == me && erin2.deviceId() in it.added }
    seen.expect<SottoException.IdentityUnacknowledged> { frank.sendMessage(Conversation.Direct(me), "x") }
    frank.acknowledgeIdentity(me)
    frank.sendMessage(Conversation.Direct(me), "acknowledged")
    seen.expect<SottoException.NeedsRecoveryKey> { erin.removeDevice(erin2.deviceId()) }
    seen.expect<SottoException.Link> { erin.removeDevice(erin.deviceId()) } // itself
    val rk = erin.exportRecoveryKey()
    seen.expect<SottoException.NoAccountKey> { erin.exportRecoveryKey() }
    seen.expect<SottoException.BadRecoveryKey> { erin2.recoverAccount(rk.dropLast(1) + if (rk.last() == '0') "1" else "0") }
    // The second device takes a new list key: the first one's stops counting.
    erin2.recoverAccount(rk)
    seen.expect<SottoException.NoListKey> { erin.removeDevice(erin2.deviceId()) }

    // Groups.
    seen.expect<SottoException.BadGroupId> { erin.sendGroupText("not a group", "x") }
    seen.expect<SottoException.UnknownGroup> { erin.sendGroupText("0".repeat(64), "x") }
    val g = erin.createGroup("team", listOf(f))
    seen.expect<SottoException.Group> { erin.addGroupMembers(g, listOf()) } // a change without changes
    waitFor(frank) { it is Event.GroupChanged && it.group == g } // the welcome
    seen.expect<SottoException.NotGroupAdmin> { frank.renameGroup(g, "renamed") }

    frank.shutdown()
    frank.close()
    erin2.shutdown()
    erin.shutdown()
    seen.expect<SottoException.Closed> { erin.conversations() }
    // Once no client runs the store (while one does, opening it is DeviceInUse).
    seen.expect<SottoException.WrongStoreKey> { SottoClient.open(path, newKey(), opts) }
    erin2.close()
    erin.close()

    // The cases no call here can provoke (see the top of this file).
    listOf(
        SottoException.StoreConflict(),
        SottoException.DeviceList("forged"),
        SottoException.LinkTimeout(),
        SottoException.SenderKey("r"),
        SottoException.Internal("r"),
        SottoException.Entropy(),
        SottoException.AttachmentCorrupt("r"),
        SottoException.Cancelled(),
        SottoException.File("r"),
    ).forEach { seen.record(it, provokedByCall = false) }
    // A retryable relay refusal, built by hand.
    val limited = SottoException.Relay(429u, 40u, "RATE_LIMITED", true)
    seen.record(limited, retryable = true, provokedByCall = false)

    val missing = ERROR_CODES.keys - seen.provoked - seen.constructed
    check(missing.isEmpty()) { "not covered: $missing" }
    println("kotlin: ${seen.provoked.size} error cases provoked, ${(seen.constructed - seen.provoked).size} constructed")
}

fun <T> Set<T>.symmetricDifference(other: Set<T>): Set<T> = (this - other) + (other - this)
