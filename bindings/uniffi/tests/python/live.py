"""Live lists and the chat API in Python, against the relay at $SOTTO_RELAY_URL.

- A timeline subscription sees a Reset, then diffs for a received message, its edit and
  a reaction to it.
- A message's send state moves Queued -> (Sending ->) Sent -> Delivered -> Read (the peer marks it
  read), as the sender's timeline shows it.
- Kill and restart: a child process runs the receiver's client while 30 messages
  arrive and is killed with SIGKILL part-way; the store reopened in this process shows
  every message exactly once, in the timeline and in the conversation list.

Called from test_sotto.py; `python3 live.py child STORE KEYHEX` is the child process.
"""

import asyncio
import os
import signal
import sys
import time

from sotto_ffi import ClientOptions, Conversation, ConversationListListener, SendState, SottoClient, TimelineListener

TIMEOUT = 30.0  # failsafe only: every wait returns as soon as the list changes


def apply(items, diffs):
    """What an app does with each batch of diffs."""
    for d in diffs:
        if d.is_reset():
            items[:] = d.items
        elif d.is_insert():
            items.insert(d.index, d.item)
        elif d.is_update():
            items[d.index] = d.item
        elif d.is_remove():
            del items[d.index]


class Live:
    """A list kept up to date by a listener (on an SDK thread), read on the event loop."""

    def __init__(self, loop):
        self.loop, self.items, self.batches = loop, [], []
        self.changed = asyncio.Event()

    def on_update(self, diffs):  # on an SDK thread
        self.loop.call_soon_threadsafe(self._apply, diffs)

    def _apply(self, diffs):
        self.batches.append(diffs)
        apply(self.items, diffs)
        self.changed.set()

    async def until(self, predicate, what):
        deadline = time.monotonic() + TIMEOUT
        while not predicate(self.items):
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.items}")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.items


class TimelineLive(Live, TimelineListener):
    pass


class ListLive(Live, ConversationListListener):
    pass


def by_id(items, message_id):
    return next((i for i in items if i.key.id == message_id), None)


def rank(state):
    for r, s in enumerate(
        (SendState.QUEUED(), SendState.SENDING(), SendState.SENT(), SendState.DELIVERED(), SendState.READ())
    ):
        if state == s:
            return r
    raise AssertionError(f"unexpected send state {state}")


async def wait_event(client, predicate):
    deadline = time.monotonic() + TIMEOUT
    while True:
        e = await asyncio.wait_for(client.next_event(), max(0.0, deadline - time.monotonic()))
        assert e is not None, "the event stream ended"
        if predicate(e):
            return e


async def timeline_and_send_states(relay, folder):
    loop = asyncio.get_running_loop()
    opts = ClientOptions()
    gina = await SottoClient.create_account(os.path.join(folder, "gina.db"), os.urandom(32), relay, opts)
    hank = await SottoClient.create_account(os.path.join(folder, "hank.db"), os.urandom(32), relay, opts)
    g, h = gina.account_id(), hank.account_id()
    await gina.add_contact(hank.contact_link())
    await hank.add_contact(gina.contact_link())
    to_hank, to_gina = Conversation.DIRECT(h), Conversation.DIRECT(g)

    # A Reset first, then diffs for a received message, its edit and a reaction.
    live = TimelineLive(loop)
    sub = gina.timeline(to_hank, 50).subscribe(live)
    await live.until(lambda _: live.batches, "the first callback")
    assert live.batches[0][0].is_reset(), live.batches[0]
    first = await hank.send_message(to_gina, "first")
    assert first.send_state == SendState.QUEUED() and first.key.sender == h, first
    await live.until(lambda items: by_id(items, first.key.id), "the received message")
    got = by_id(live.items, first.key.id)
    assert got.text == "first" and got.send_state is None and got.key.conversation == to_hank, got
    assert any(d.is_insert() and d.item.key.id == first.key.id for b in live.batches[1:] for d in b)
    await hank.edit(first.key, "first, edited")
    await live.until(lambda items: by_id(items, first.key.id).text == "first, edited", "the edit")
    assert by_id(live.items, first.key.id).edited_at_ms is not None
    await hank.react(first.key, "\N{THUMBS UP SIGN}")
    await live.until(lambda items: by_id(items, first.key.id).reactions, "the reaction")
    [r] = by_id(live.items, first.key.id).reactions
    assert (r.by_account, r.emoji) == (h, "\N{THUMBS UP SIGN}"), r
    assert sum(1 for b in live.batches for d in b if d.is_update()) >= 2
    # The timeline agrees with a fresh snapshot.
    assert live.items == await gina.timeline(to_hank, 50).snapshot()

    # A send's state: Queued (the local echo), Sent, Delivered, Read.
    ping = await gina.send_message(to_hank, "ping")
    assert ping.send_state == SendState.QUEUED() and ping.text == "ping", ping
    states = [ping.send_state]

    def state_is(wanted):
        def check(items):
            item = by_id(items, ping.key.id)
            return item is not None and rank(item.send_state) >= rank(wanted)
        return check

    await live.until(state_is(SendState.SENT()), "Sent")
    await wait_event(hank, lambda e: e.is_message_received() and e.message.id == ping.key.id)
    await hank.send_receipts_now()
    await live.until(state_is(SendState.DELIVERED()), "Delivered")
    await hank.mark_read(to_gina)
    await hank.send_receipts_now()
    await live.until(state_is(SendState.READ()), "Read")
    # Every state the diffs carried for it, in order.
    for batch in live.batches:
        for d in batch:
            for item in d.items if d.is_reset() else [] if d.is_remove() else [d.item]:
                if item.key.id == ping.key.id and item.send_state != states[-1]:
                    states.append(item.send_state)
    # Sending (handed to the relay, no answer yet) may be too short to reach a batch.
    states = [s for s in states if s != SendState.SENDING()]
    assert states == [SendState.QUEUED(), SendState.SENT(), SendState.DELIVERED(), SendState.READ()], states
    await wait_event(gina, lambda e: e.is_read() and ping.key.id in e.ids and e.by_account == h)
    sub.cancel()

    # The conversation lists: Gina's shows the ping last; Hank read everything.
    [mine] = await gina.conversation_list().snapshot()
    assert mine.conversation == to_hank and mine.last_message.text == "ping", mine
    [his] = await hank.conversation_list().snapshot()
    assert his.conversation == to_gina and his.unread == 0, his
    await gina.shutdown()
    await hank.shutdown()


async def child(store, key_hex):
    """Runs the receiver until killed, printing each text as it arrives."""
    ivy = await SottoClient.open(store, bytes.fromhex(key_hex), ClientOptions())
    print("ready", flush=True)
    while (e := await ivy.next_event()) is not None:
        if e.is_message_received():
            print("got", e.message.text, flush=True)


async def kill_and_restart(relay, folder):
    loop = asyncio.get_running_loop()
    opts = ClientOptions()
    path, key = os.path.join(folder, "ivy.db"), os.urandom(32)
    ivy = await SottoClient.create_account(path, key, relay, opts)
    jack = await SottoClient.create_account(os.path.join(folder, "jack.db"), os.urandom(32), relay, opts)
    i, j = ivy.account_id(), jack.account_id()
    await ivy.add_contact(jack.contact_link())
    await jack.add_contact(ivy.contact_link())
    await ivy.shutdown()

    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "child", path, key.hex(), stdout=asyncio.subprocess.PIPE)
    assert (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).strip() == b"ready"
    texts = [f"m{n:02}" for n in range(30)]
    for t in texts:
        await jack.send_message(Conversation.DIRECT(i), t)
    # Killed once a few have arrived: others are on their way or still at the relay.
    seen = 0
    while seen < 5:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line, "the child ended"
        seen += line.startswith(b"got ")
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()

    ivy = await SottoClient.open(path, key, opts)
    live = TimelineLive(loop)
    sub = ivy.timeline(Conversation.DIRECT(j), 100).subscribe(live)
    await live.until(lambda items: len(items) >= len(texts), "every message")
    await wait_event(ivy, lambda e: e.is_caught_up())
    items = await ivy.timeline(Conversation.DIRECT(j), 100).snapshot()
    assert live.items == items
    assert sorted(x.text for x in items) == texts, [x.text for x in items]
    assert len({x.key.id for x in items}) == len(texts)
    conversations = ListLive(loop)
    list_sub = ivy.conversation_list().subscribe(conversations)
    [summary] = await conversations.until(lambda items: items, "the conversation list")
    assert summary.conversation == Conversation.DIRECT(j) and summary.unread == len(texts), summary
    sub.cancel()
    list_sub.cancel()
    await ivy.shutdown()
    await jack.shutdown()
    print(f"python: live lists, send states and a kill -9 restart with {len(texts)} messages passed")


async def live_lists(relay, folder):
    os.makedirs(folder, exist_ok=True)
    await timeline_and_send_states(relay, folder)
    await kill_and_restart(relay, folder)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "child":
    asyncio.run(child(sys.argv[2], sys.argv[3]))
