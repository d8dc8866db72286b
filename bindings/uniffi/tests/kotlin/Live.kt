// Live lists and the chat API in Kotlin, against the relay at $SOTTO_RELAY_URL:
// - a timeline subscription sees a Reset, then diffs for a received message, its edit and
//   a reaction to it;
// - a message's send state moves Queued -> (Sending ->) Sent -> Delivered -> Read (the peer marks it
//   read), as the sender's timeline shows it;
// - restart: the receiver's client is shut down while 30 messages arrive and reopened from
//   the same store, and every message shows exactly once. This is a shutdown and reopen in
//   one JVM, not a killed process: the Python test (live.py) kills its receiver with
//   SIGKILL.
// Called from TestSotto.kt's main.

import java.io.File
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.withTimeoutOrNull
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Conversation
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.SendState
import uniffi.sotto_ffi.SottoClient
import uniffi.sotto_ffi.TimelineDiff
import uniffi.sotto_ffi.TimelineItem
import uniffi.sotto_ffi.TimelineListener

/** A timeline kept up to date by its listener, as an app keeps the list its UI shows. */
class LiveTimeline : TimelineListener {
    private val items = mutableListOf<TimelineItem>()
    val batches = mutableListOf<List<TimelineDiff>>()
    private val changed = Channel<Unit>(Channel.CONFLATED)

    override fun onUpdate(diffs: List<TimelineDiff>) { // on an SDK thread
        synchronized(this) {
            batches += diffs
            for (d in diffs) {
                when (d) {
                    is TimelineDiff.Reset -> { items.clear(); items.addAll(d.items) }
                    is TimelineDiff.Insert -> items.add(d.index.toInt(), d.item)
                    is TimelineDiff.Update -> items[d.index.toInt()] = d.item
                    is TimelineDiff.Remove -> items.removeAt(d.index.toInt())
                }
            }
        }
        changed.trySend(Unit)
    }

    fun current(): List<TimelineItem> = synchronized(this) { items.toList() }

    fun allBatches(): List<List<TimelineDiff>> = synchronized(this) { batches.toList() }

    suspend fun until(what: String, predicate: (List<TimelineItem>) -> Boolean): List<TimelineItem> =
        withTimeoutOrNull(TIMEOUT_MS) {
            var now = current()
            while (!predicate(now)) {
                changed.receive()
                now = current()
            }
            now
        } ?: throw AssertionError("timed out waiting for $what: ${current()}")
}

fun List<TimelineItem>.byId(id: String): TimelineItem? = firstOrNull { it.key.id == id }

val STATE_ORDER = listOf(SendState.Queued, SendState.Sending, SendState.Sent, SendState.Delivered, SendState.Read)

fun atLeast(id: String, state: SendState): (List<TimelineItem>) -> Boolean = { items ->
    val s = items.byId(id)?.sendState
    s != null && STATE_ORDER.indexOf(s) >= STATE_ORDER.indexOf(state)
}

suspend fun liveLists(relay: String, folder: File) {
    folder.mkdirs()
    timelineAndSendStates(relay, folder)
    shutdownAndReopen(relay, folder)
}

suspend fun timelineAndSendStates(relay: String, folder: File) {
    val opts = ClientOptions()
    val gina = SottoClient.createAccount(File(folder, "gina.db").path, newKey(), relay, opts)
    val hank = SottoClient.createAccount(File(folder, "hank.db").path, newKey(), relay, opts)
    val g = gina.accountId()
    val h = hank.accountId()
    gina.addContact(hank.contactLink())
    hank.addContact(gina.contactLink())
    val toHank = Conversation.Direct(h)
    val toGina = Conversation.Direct(g)

    // A Reset first, then diffs for a received message, its edit and a reaction.
    val live = LiveTimeline()
    val timeline = gina.timeline(toHank, 50u)
    val sub = timeline.subscribe(live)
    live.until("the first callback") { live.allBatches().isNotEmpty() }
    check(live.allBatches()[0][0] is TimelineDiff.Reset) { "${live.allBatches()[0]}" }
    val first = hank.sendMessage(toGina, "first")
    check(first.sendState == SendState.Queued && first.key.sender == h) { "$first" }
    live.until("the received message") { it.byId(first.key.id) != null }
    val got = live.current().byId(first.key.id)!!
    check(got.text == "first" && got.sendState == null && got.key.conversation == toHank) { "$got" }
    check(live.allBatches().drop(1).flatten().any { it is TimelineDiff.Insert && it.item.key.id == first.key.id }) {
        "no insert"
    }
    hank.edit(first.key, "first, edited")
    live.until("the edit") { it.byId(first.key.id)?.text == "first, edited" }
    check(live.current().byId(first.key.id)!!.editedAtMs != null) { "edited_at_ms" }
    hank.react(first.key, "\uD83D\uDC4D")
    live.until("the reaction") { it.byId(first.key.id)?.reactions?.isNotEmpty() == true }
    val r = live.current().byId(first.key.id)!!.reactions.single()
    check(r.byAccount == h && r.emoji == "\uD83D\uDC4D") { "$r" }
    check(live.allBatches().flatten().count { it is TimelineDiff.Update } >= 2) { "updates" }
    check(live.current() == timeline.snapshot()) { "the live list differs from a snapshot" }

    // A send's state: Queued (the local echo), Sent, Delivered, Read.
    val ping = gina.sendMessage(toHank, "ping")
    check(ping.sendState == SendState.Queued && ping.text == "ping") { "$ping" }
    live.until("Sent", atLeast(ping.key.id, SendState.Sent))
    waitFor(hank) { it is Event.MessageReceived && it.message.id == ping.key.id }
    hank.sendReceiptsNow()
    live.until("Delivered", atLeast(ping.key.id, SendState.Delivered))
    hank.markRead(toGina)
    hank.sendReceiptsNow()
    live.until("Read", atLeast(ping.key.id, SendState.Read))
    // Every state the diffs carried for it, in order.
    val states = mutableListOf<SendState?>(ping.sendState)
    for (d in live.allBatches().flatten()) {
        val items = when (d) {
            is TimelineDiff.Reset -> d.items
            is TimelineDiff.Insert -> listOf(d.item)
            is TimelineDiff.Update -> listOf(d.item)
            is TimelineDiff.Remove -> listOf()
        }
        for (i in items) if (i.key.id == ping.key.id && i.sendState != states.last()) states += i.sendState
    }
    // Sending (handed to the relay, no answer yet) may be too short to reach a batch.
    val seen = states.filter { it != SendState.Sending }
    check(seen == STATE_ORDER.filter { it != SendState.Sending }) { "send states $states" }
    waitFor(gina) { it is Event.Read && ping.key.id in it.ids && it.byAccount == h }
    sub.cancel()
    sub.close()
    timeline.close()

    // The conversation lists: Gina's shows the ping last; Hank read everything.
    val mine = gina.conversationList().use { it.snapshot() }.single()
    check(mine.conversation == toHank && mine.lastMessage?.text == "ping") { "$mine" }
    val his = hank.conversationList().use { it.snapshot() }.single()
    check(his.conversation == toGina && his.unread == 0u) { "$his" }
    gina.shutdown()
    hank.shutdown()
    gina.close()
    hank.close()
}

suspend fun shutdownAndReopen(relay: String, folder: File) {
    val opts = ClientOptions()
    val path = File(folder, "ivy.db").path
    val key = newKey()
    var ivy = SottoClient.createAccount(path, key, relay, opts)
    val jack = SottoClient.createAccount(File(folder, "jack.db").path, newKey(), relay, opts)
    val i = ivy.accountId()
    val j = jack.accountId()
    ivy.addContact(jack.contactLink())
    jack.addContact(ivy.contactLink())

    val texts = (0 until 30).map { "m%02d".format(it) }
    for (t in texts) jack.sendMessage(Conversation.Direct(i), t)
    // Shut down once a few have arrived: others are on their way or still at the relay.
    var seen = 0
    waitFor(ivy) {
        if (it is Event.MessageReceived) seen++
        seen >= 5
    }
    ivy.shutdown()
    ivy.close()

    ivy = SottoClient.open(path, key, opts)
    val live = LiveTimeline()
    val timeline = ivy.timeline(Conversation.Direct(j), 100u)
    val sub = timeline.subscribe(live)
    live.until("every message") { it.size >= texts.size }
    waitFor(ivy) { it is Event.CaughtUp }
    val items = timeline.snapshot()
    check(live.current() == items) { "the live list differs from a snapshot" }
    check(items.map { it.text }.sorted() == texts) { "${items.map { it.text }}" }
    check(items.map { it.key.id }.toSet().size == texts.size) { "a message shows twice" }
    val summary = ivy.conversationList().use { it.snapshot() }.single()
    check(summary.conversation == Conversation.Direct(j) && summary.unread == texts.size.toUInt()) { "$summary" }
    sub.close()
    timeline.close()
    ivy.shutdown()
    jack.shutdown()
    ivy.close()
    jack.close()
    println("kotlin: live lists, send states and a restart with ${texts.size} messages passed")
}
