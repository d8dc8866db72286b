"""Echo bot: creates an account, prints its contact link, and answers every text it
receives with the same text.

    python3 echo_bot.py RELAY_URL STORE_PATH [REPLIES]

with the `sotto` wheel installed (docs/bindings.md, "Python").

REPLIES stops the bot after that many answers (scripts/bindings.sh runs it so). The
store key is made up on each start: a real app keeps its key in the platform keystore.
"""

import asyncio
import os
import sys

from sotto_ffi import ClientOptions, MessageStatus, SottoClient


async def main(relay, store, replies=None):
    bot = await SottoClient.create_account(store, os.urandom(32), relay, ClientOptions())
    print(bot.contact_link(), flush=True)
    unsent = set()  # replies the relay has not stored yet: the bot stops once they are out
    while replies != 0 or unsent:
        event = await bot.next_event()
        if event is None:
            break
        if event.is_message_received() and replies != 0:
            m = event.message
            if m.status == MessageStatus.RECEIVED() and m.group is None:
                unsent.add((await bot.send_text(m.conversation, m.text)).id)
                replies = None if replies is None else replies - 1
        elif event.is_message_sent() or event.is_send_failed():
            unsent.discard(event.id)
    await bot.shutdown()  # stops the connection; anything still queued goes on the next start


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None))
    sys.stdout.flush()
    os._exit(0)  # see docs/bindings.md, "Python"
