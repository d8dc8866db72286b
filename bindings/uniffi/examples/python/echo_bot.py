"""Echo bot: creates an account, prints its contact link, and answers every text it
receives with the same text.

    PYTHONPATH=bindings/generated/python python3 echo_bot.py RELAY_URL STORE_PATH [REPLIES]

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
    while replies != 0 and (event := await bot.next_event()) is not None:
        m = event.message if event.is_message_received() else None
        if m is not None and m.status == MessageStatus.RECEIVED() and m.group is None:
            await bot.send_text(m.conversation, m.text)
            replies = None if replies is None else replies - 1
    await bot.shutdown()  # sends what is still queued first


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None))
    sys.stdout.flush()
    os._exit(0)  # see docs/bindings.md, "Python"
