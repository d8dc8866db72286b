// Echo bot: creates an account, prints its contact link, and answers every text it
// receives with the same text.
//
//     java ... EchoBotKt RELAY_URL STORE_PATH [REPLIES]
//
// REPLIES stops the bot after that many answers (scripts/bindings.sh runs it so). The
// store key is made up on each start: a real app keeps its key in the Android Keystore.

import java.security.SecureRandom
import kotlinx.coroutines.runBlocking
import uniffi.sotto_ffi.ClientOptions
import uniffi.sotto_ffi.Event
import uniffi.sotto_ffi.MessageStatus
import uniffi.sotto_ffi.SottoClient

fun main(args: Array<String>) = runBlocking {
    val key = ByteArray(32).also { SecureRandom().nextBytes(it) }
    var replies = args.getOrNull(2)?.toInt()
    SottoClient.createAccount(args[1], key, args[0], ClientOptions()).use { bot ->
        println(bot.contactLink())
        // Replies the relay has not stored yet: the bot stops once they are out.
        val unsent = mutableSetOf<String>()
        while (replies != 0 || unsent.isNotEmpty()) {
            when (val event = bot.nextEvent() ?: break) {
                is Event.MessageReceived -> {
                    val m = event.message
                    if (replies != 0 && m.status == MessageStatus.Received && m.group == null) {
                        unsent.add(bot.sendText(m.conversation, m.text).id)
                        replies = replies?.minus(1)
                    }
                }
                is Event.MessageSent -> unsent.remove(event.id)
                is Event.SendFailed -> unsent.remove(event.id)
                else -> {}
            }
        }
        bot.shutdown() // stops the connection; anything still queued goes on the next start
    }
}
