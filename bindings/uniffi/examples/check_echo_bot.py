"""Checks an echo bot (python/echo_bot.py, kotlin/EchoBot.kt, swift/main.swift) against
the relay at $SOTTO_RELAY_URL: starts the bot command given, which must print its contact
link and stop after two replies, adds the bot by that link, sends it two texts and waits
for each to come back from the bot. Run by scripts/bindings.sh:

    python3 check_echo_bot.py LANGUAGE BOT_COMMAND...
"""

import asyncio
import os
import sys
import time

from sotto_ffi import ClientOptions, SottoClient

TIMEOUT = 60.0  # failsafe only: a JVM starts in a few seconds


async def main(language, command):
    relay, folder = os.environ["SOTTO_RELAY_URL"], os.environ["SOTTO_TEST_DIR"]
    bot = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT

    def left():
        return max(0.0, deadline - time.monotonic())

    try:
        link = (await asyncio.wait_for(bot.stdout.readline(), left())).decode().strip()
        assert link.startswith("sotto:"), f"the {language} bot printed {link!r}, not its contact link"
        me = await SottoClient.create_account(
            os.path.join(folder, f"echo-{language}.db"), os.urandom(32), relay, ClientOptions())
        bot_id = await me.add_contact(link)
        for text in (f"hello {language} bot", "zweite Nachricht, ünïcödé ✓"):
            await me.send_text(bot_id, text)
            while True:
                e = await asyncio.wait_for(me.next_event(), left())
                assert e is not None, "the event stream ended"
                if e.is_message_received():
                    assert e.message.sender_account == bot_id and e.message.text == text, e.message
                    break
        # The bot stops by itself after its second reply.
        rc = await asyncio.wait_for(bot.wait(), left())
        assert rc == 0, f"the {language} bot exited with {rc}"
        await me.shutdown()
        print(f"{language}: the echo bot answered", flush=True)
    finally:
        if bot.returncode is None:
            bot.kill()
            await bot.wait()


if __name__ == "__main__":
    status = 0
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2:]))
    except Exception as e:  # reported here; the exit status says it
        print(f"check_echo_bot: {type(e).__name__}: {e}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # see docs/bindings.md, "Python"
