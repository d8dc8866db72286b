// Attachments, push registration and the notification extension in Kotlin, against the
// relay at $SOTTO_RELAY_URL (what media.py checks in Python):
// - Alice sends Bob a file from bytes (with progress) and one from a path; Bob downloads
//   them to bytes and to a path and gets them back exactly;
// - a cancelled upload and a missing file are typed errors;
// - Bob registers a push token and removes it;
// - while Bob's app runs, his notification extension is told the app is active; with the
//   app shut down, it fetches what Alice sent meanwhile, once, and returns what to show;
//   the app, reopened, holds that message once.
// Called from TestSotto.kt's main.

import java.io.File
import java.security.SecureRandom
import kotlinx.coroutines.withTimeoutOrNull
import uniffi.sotto_ffi.AttachmentInfo
import uniffi.sotto_ffi.CancelToken
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Conversation
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.MessageKey
import uniffi.sotto_ffi.NotificationExtension
import uniffi.sotto_ffi.Page
import uniffi.sotto_ffi.ProgressListener
import uniffi.sotto_ffi.PushService
import uniffi.sotto_ffi.SottoClient
import uniffi.sotto_ffi.SottoException

/** Every progress call, in order (they come on an SDK thread). */
class Progress : ProgressListener {
    private val calls = mutableListOf<Pair<ULong, ULong>>()

    override fun onProgress(done: ULong, total: ULong) {
        synchronized(this) { calls += done to total }
    }

    fun all(): List<Pair<ULong, ULong>> = synchronized(this) { calls.toList() }
}

suspend fun media(relay: String, dir: File) {
    dir.mkdirs()
    val keyA = newKey()
    val keyB = newKey()
    val pathA = File(dir, "alice.db").path
    val pathB = File(dir, "bob.db").path
    val opts = ClientOptions()
    val alice = SottoClient.createAccount(pathA, keyA, relay, opts)
    var bob = SottoClient.createAccount(pathB, keyB, relay, opts)
    val a = alice.accountId()
    val b = bob.accountId()
    alice.addContact(bob.contactLink())
    bob.addContact(a)
    val toBob = Conversation.Direct(b)

    val photo = ByteArray(200_000).also { SecureRandom().nextBytes(it) }
    val progress = Progress()
    val info = AttachmentInfo(mediaType = "image/png", fileName = "cat.png", caption = "our cat", thumbnail = byteArrayOf(-119, 80, 78, 71))
    val item = alice.sendAttachmentBytes(toBob, photo, info, progress, null)
    check(item.attachment?.size == photo.size.toULong() && item.attachment?.fileName == "cat.png") { "$item" }
    val calls = progress.all()
    check(calls.isNotEmpty() && calls.last().first == calls.last().second) { "$calls" }
    val photoMessage = (waitFor(bob, received("our cat")) as Event.MessageReceived).message
    val photoKey = MessageKey(Conversation.Direct(a), a, photoMessage.id)
    check(bob.downloadAttachmentBytes(photoKey).contentEquals(photo)) { "the photo came back changed" }
    val reader = bob.openAttachment(photoKey)
    check(reader.ciphertextLen() > photo.size.toULong()) { "${reader.ciphertextLen()}" }
    val streamed = java.io.ByteArrayOutputStream()
    while (true) streamed.write(reader.nextChunk() ?: break)
    check(streamed.toByteArray().contentEquals(photo)) { "the photo read piece by piece came back changed" }
    // Again with every wait cancelled after 1 ms: a cancelled wait loses no piece.
    val again = bob.openAttachment(photoKey)
    val sliced = java.io.ByteArrayOutputStream()
    while (true) {
        val ready = withTimeoutOrNull(1) { again.waitChunk() } ?: continue
        if (!ready) break
        sliced.write(again.takeChunk() ?: throw AssertionError("a ready piece was not there to take"))
    }
    check(sliced.toByteArray().contentEquals(photo)) { "the photo read with cancelled waits came back changed" }

    val source = File(dir, "notes.txt").also { it.writeText("minutes of the meeting\n".repeat(5000)) }
    alice.sendAttachmentFile(toBob, source.path, AttachmentInfo(mediaType = "text/plain", caption = "notes"), null, null)
    val notes = (waitFor(bob, received("notes")) as Event.MessageReceived).message
    val dest = File(dir, "received.txt")
    bob.downloadAttachment(MessageKey(Conversation.Direct(a), a, notes.id), dest.path, null, null)
    check(dest.readBytes().contentEquals(source.readBytes())) { "the file came back changed" }

    val cancel = CancelToken()
    cancel.cancel()
    val cancelled = expectError<SottoException.Cancelled> {
        alice.sendAttachmentBytes(toBob, photo, AttachmentInfo(), null, cancel)
    }
    check(cancelled.code() == "cancelled") { cancelled.code() }
    val missing = expectError<SottoException.File> {
        alice.sendAttachmentFile(toBob, File(dir, "missing").path, AttachmentInfo(), null, null)
    }
    check(missing.code() == "file") { missing.code() }

    bob.registerPush(PushService.FCM, "fcm-registration-token".toByteArray())
    bob.unregisterPush()

    // While Bob's app runs, his extension has nothing to do.
    val ext = NotificationExtension.open(pathB, keyB, opts)
    val busy = ext.fetch(10_000uL)
    check(busy.appActive && busy.notifications.isEmpty()) { "$busy" }
    // With the app shut down, the extension shows what arrived.
    bob.shutdown()
    bob.close()
    val sent = alice.sendText(b, "are you there?")
    waitFor(alice) { it is Event.MessageSent && it.id == sent.id }
    val fetched = ext.fetch(10_000uL)
    check(fetched.complete && !fetched.appActive) { "$fetched" }
    check(fetched.notifications.map { it.body to it.key.sender } == listOf("are you there?" to a)) { "$fetched" }
    // Fetched once: the next fetch finds nothing, and the app, reopened, holds it once.
    check(ext.fetch(5_000uL).notifications.isEmpty()) { "fetched twice" }
    ext.close()
    bob = SottoClient.open(pathB, keyB, ClientOptions(connect = false))
    val history = bob.messages(a, Page()).map { it.text }
    check(history.count { it == "are you there?" } == 1) { "$history" }
    bob.shutdown()
    bob.close()
    alice.shutdown()
    alice.close()
    println("kotlin: attachments, push registration and the notification extension")
}
