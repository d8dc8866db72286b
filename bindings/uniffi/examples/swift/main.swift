// Echo bot: creates an account, prints its contact link, and answers every text it
// receives with the same text.
//
//     echo-bot RELAY_URL STORE_PATH [REPLIES]
//
// REPLIES stops the bot after that many answers (scripts/bindings.sh runs it so). The
// store key is made up on each start: a real app keeps its key in the Keychain.

import Foundation

let args = CommandLine.arguments
var replies = args.count > 3 ? Int(args[3]) : nil
var rng = SystemRandomNumberGenerator()
let key = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })

do {
    let bot = try await SottoClient.createAccount(
        storePath: args[2], storeKey: key, relayUrl: args[1], options: ClientOptions())
    print(bot.contactLink())
    fflush(stdout)
    // Replies the relay has not stored yet: the bot stops once they are out.
    var unsent = Set<String>()
    while replies != 0 || !unsent.isEmpty, let event = await bot.nextEvent() {
        switch event {
        case .messageReceived(let m) where replies != 0 && m.status == .received && m.group == nil:
            unsent.insert(try await bot.sendText(contact: m.conversation, text: m.text).id)
            replies = replies.map { $0 - 1 }
        case .messageSent(let id, _), .sendFailed(let id, _, _, _, _):
            unsent.remove(id)
        default:
            break
        }
    }
    await bot.shutdown()  // stops the connection; anything still queued goes on the next start
} catch {
    print("echo-bot: \(error)")
    exit(1)
}
