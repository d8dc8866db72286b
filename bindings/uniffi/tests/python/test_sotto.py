"""Python tests of the sotto_ffi binding against the relay at $SOTTO_RELAY_URL.

Two clients register, exchange messages both ways, read their history after reopening
their stores, and see errors as typed exceptions; a group is created, talks, and loses a
member, who gets nothing sent afterwards. Every error case is checked by errors.py; the
live lists, send states and a restart after kill -9 by live.py. Run by
scripts/bindings.sh.
"""

import asyncio
import os
import sys
import time

from errors import every_error
from live import live_lists
from media import media
from sotto_ffi import ClientOptions, EventListener, GroupRole, MessageStatus, Page, SottoClient, SottoError

RELAY = os.environ["SOTTO_RELAY_URL"]
DIR = os.environ["SOTTO_TEST_DIR"]
TIMEOUT = 30.0  # failsafe only: every wait returns as soon as the event arrives


async def wait_for_event(client, predicate, slice_s=None):
    """Reads events until one matches. With `slice_s`, each wait is cancelled after that
    long and started again, and the event is taken once a wait saw it ready: a cancelled
    wait must not lose the event."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for an event")
        if slice_s is None:
            event = await asyncio.wait_for(client.next_event(), left)
        else:
            try:
                ready = await asyncio.wait_for(client.wait_event(), min(left, slice_s))
            except asyncio.TimeoutError:
                continue
            assert ready, "the event stream ended"
            event = client.take_event()
            assert event is not None, "a ready event was not there to take"
        assert event is not None, "the event stream ended"
        if predicate(event):
            return event


def received(text):
    return lambda e: e.is_message_received() and e.message.text == text


def group_changed(group):
    return lambda e: e.is_group_changed() and e.group == group


async def wait_for_members(client, group, members):
    """Waits until `client` holds `group` with exactly these member accounts."""
    while sorted(m.account for m in (await client.group(group)).members) != sorted(members):
        await wait_for_event(client, group_changed(group))


async def expect_error(cls, coro):
    try:
        await coro
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


async def main():
    # Every error case, provoked or constructed, with its code (errors.py).
    os.makedirs(os.path.join(DIR, "errors"), exist_ok=True)
    await every_error(RELAY, os.path.join(DIR, "errors"))
    # Live lists, send states and a restart after kill -9 (live.py).
    await live_lists(RELAY, os.path.join(DIR, "live"))
    # Attachments, push registration and the notification extension (media.py).
    await media(RELAY, os.path.join(DIR, "media"))

    key_a, key_b = os.urandom(32), os.urandom(32)
    path_a, path_b = os.path.join(DIR, "alice.db"), os.path.join(DIR, "bob.db")
    opts = ClientOptions()
    # Receipts wait ten minutes in this first session unless sent now (or at shutdown).
    slow_receipts = ClientOptions(receipt_delay_min_ms=600_000, receipt_delay_max_ms=600_001)
    alice = await SottoClient.create_account(path_a, key_a, RELAY, slow_receipts)
    bob = await SottoClient.create_account(path_b, key_b, RELAY, slow_receipts)
    a_id, b_id = alice.account_id(), bob.account_id()
    assert len(a_id) == 52 and a_id != b_id
    assert alice.contact_link().startswith("sotto:" + a_id + ".") and len(alice.contact_link()) == 6 + 52 + 1 + 64
    assert alice.device_id() == 1

    assert await alice.add_contact(bob.contact_link()) == b_id
    assert await bob.add_contact(a_id) == a_id

    sent = await alice.send_text(b_id, "hello bob")
    assert sent.status == MessageStatus.QUEUED() and sent.conversation == b_id
    ev = await wait_for_event(bob, received("hello bob"))
    m = ev.message
    assert m.sender_account == a_id and m.sender_device == 1
    assert m.conversation == a_id and m.status == MessageStatus.RECEIVED() and m.id == sent.id
    await wait_for_event(alice, lambda e: e.is_message_sent() and e.id == sent.id)
    # Bob's receipt goes out now instead of after its random delay.
    await bob.send_receipts_now()
    await wait_for_event(alice, lambda e: e.is_delivered() and sent.id in e.ids and e.by_account == b_id and e.conversation == b_id)

    # The reply is awaited with reads cancelled every 20 ms.
    reply = await bob.send_text(a_id, "hi alice")
    await wait_for_event(alice, received("hi alice"), slice_s=0.02)
    await wait_for_event(bob, lambda e: e.is_message_sent() and e.id == reply.id)

    sn_a, sn_b = await alice.safety_number(b_id), await bob.safety_number(a_id)
    assert sn_a == sn_b and len(sn_a.split(" ")) == 12, sn_a

    # Errors are typed exceptions with a stable code.
    e = await expect_error(SottoError.BadContact, alice.send_text("not an account", "x"))
    assert e.code() == "bad_contact" and not e.is_retryable()
    e = await expect_error(SottoError.InvalidArgument, SottoClient.open(path_a, b"short", opts))
    assert e.code() == "invalid_argument"
    e = await expect_error(SottoError.AccountExists, SottoClient.create_account(path_a, key_a, RELAY, opts))

    # History after reopening the stores.
    await alice.shutdown()
    await bob.shutdown()
    await expect_error(SottoError.Closed, alice.conversations())
    e = await expect_error(SottoError.WrongStoreKey, SottoClient.open(path_a, os.urandom(32), opts))
    assert e.code() == "wrong_store_key"

    offline = ClientOptions(connect=False)
    alice = await SottoClient.open(path_a, key_a, offline)
    assert alice.account_id() == a_id
    assert await alice.conversations() == [b_id]
    history = await alice.messages(b_id, Page())
    assert [(h.text, h.sender_account) for h in history] == [("hello bob", a_id), ("hi alice", b_id)]
    assert history[0].status in (MessageStatus.SENT(), MessageStatus.DELIVERED())
    assert history[1].status == MessageStatus.RECEIVED()
    older = await alice.messages(b_id, Page(before=history[1].order, limit=10))
    assert [h.text for h in older] == ["hello bob"]
    # Alice's receipt for "hi alice" was still waiting: shutdown kept it in the outbox.
    assert await alice.outbox_len() == 1

    # Back online, the conversation goes on; bob listens through a callback interface.
    bob = await SottoClient.open(path_b, key_b, opts)
    await alice.shutdown()
    alice = await SottoClient.open(path_a, key_a, opts)
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    class Listener(EventListener):
        def on_event(self, event):  # on an SDK thread
            loop.call_soon_threadsafe(queue.put_nowait, event)

    subscription = bob.subscribe(Listener())
    await alice.send_text(b_id, "after reopening")
    deadline = time.monotonic() + TIMEOUT
    while True:
        event = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
        if received("after reopening")(event):
            break
    subscription.cancel()
    history = await bob.messages(a_id, Page())
    assert [h.text for h in history] == ["hello bob", "hi alice", "after reopening"]

    # Device linking: alice's second device asks to join with the code her first device
    # shows; her first device shows its name and fingerprint and she confirms (without
    # giving it the account key); bob's next message reaches both.
    from sotto_ffi import PendingJoin
    code = await alice.link_new_device()
    await expect_error(SottoError.BadLinkCode, PendingJoin.start_join(
        os.path.join(DIR, "x.db"), os.urandom(32), RELAY, "sotto-link:nonsense", "x", opts))
    key_a2 = os.urandom(32)
    pending = await PendingJoin.start_join(os.path.join(DIR, "alice2.db"), key_a2, RELAY, code, "alice phone", opts)
    assert pending.device_id() == 2
    req = await wait_for_event(alice, lambda e: e.is_link_requested())
    assert req.device_name == "alice phone"
    assert req.fingerprint == pending.fingerprint()
    e = await expect_error(SottoError.UnknownLinkRequest, alice.confirm_link(req.id ^ 1, False))
    assert e.code() == "unknown_link_request"
    await alice.confirm_link(req.id, False)
    alice2 = await pending.wait_joined()
    assert alice2.account_id() == a_id and alice2.device_id() == 2
    assert await alice.can_manage_devices() and not await alice2.can_manage_devices()
    e = await expect_error(SottoError.NoListKey, alice2.link_new_device())
    assert e.code() == "no_list_key"
    assert sorted(await alice.devices_of(a_id)) == [1, 2]
    # Alice's list gained a device: once Bob's client has seen the new list (before this
    # send or during it, as timing goes), his sends to her wait until he acknowledges her
    # new safety number, as an app would have him do.
    await bob.acknowledge_identity(a_id)
    await bob.send_text(a_id, "to both devices")
    await wait_for_event(alice, received("to both devices"))
    await wait_for_event(alice2, received("to both devices"))
    assert sorted(await bob.devices_of(a_id)) == [1, 2]
    # The recovery key goes out once; it gives the second device a new list key.
    assert await alice.has_account_key()
    rk = await alice.export_recovery_key()
    assert rk.startswith("sotto-recovery:")
    assert not await alice.has_account_key()
    await expect_error(SottoError.NoAccountKey, alice.export_recovery_key())
    await expect_error(SottoError.BadRecoveryKey, alice2.recover_account(rk[:-1] + ("1" if rk[-1] == "0" else "0")))
    await alice2.recover_account(rk)
    assert await alice2.can_manage_devices() and not await alice2.has_account_key()
    # Now the first device is the one without it; removing it needs no recovery key.
    await alice2.remove_device(1)
    assert await alice2.devices_of(a_id) == [2]

    await groups(bob, opts)

    await alice2.shutdown()
    await alice.shutdown()
    await bob.shutdown()
    # After a shutdown the stream yields what was buffered, then ends.
    while await asyncio.wait_for(bob.next_event(), TIMEOUT) is not None:
        pass
    await expect_error(SottoError.Closed, bob.send_text(a_id, "too late"))
    print("python: all binding tests passed")


async def groups(bob, opts):
    """Bob creates a group with carol and dave (his contacts, added by link), all three
    talk, then bob removes dave: carol still gets what is sent, dave gets nothing more."""
    b_id = bob.account_id()
    carol = await SottoClient.create_account(os.path.join(DIR, "carol.db"), os.urandom(32), RELAY, opts)
    dave = await SottoClient.create_account(os.path.join(DIR, "dave.db"), os.urandom(32), RELAY, opts)
    c_id, d_id = carol.account_id(), dave.account_id()
    assert await bob.add_contact(carol.contact_link()) == c_id
    assert await bob.add_contact(dave.contact_link()) == d_id

    e = await expect_error(SottoError.BadContact, bob.create_group("team", [c_id, "not an account"]))
    assert e.code() == "bad_contact"
    g = await bob.create_group("team", [c_id, d_id])
    assert len(g) == 64 and g == g.lower() and len(bytes.fromhex(g)) == 32, g
    info = await bob.group(g)
    assert info.id == g and info.title == "team" and info.active and info.version == 0
    roles = {m.account: m.role for m in info.members}
    assert roles == {b_id: GroupRole.ADMIN, c_id: GroupRole.MEMBER, d_id: GroupRole.MEMBER}, roles
    assert [x.id for x in await bob.groups()] == [g]
    # The members join when bob's welcome arrives.
    await wait_for_event(carol, group_changed(g))
    await wait_for_event(dave, group_changed(g))
    assert [(x.id, x.title, x.active) for x in await carol.groups()] == [(g, "team", True)]

    # A group message reaches every other member once, with the group id.
    sent = await bob.send_group_text(g, "hello team")
    assert sent.group == g and sent.conversation == g and sent.status == MessageStatus.QUEUED()
    for member in (carol, dave):
        m = (await wait_for_event(member, received("hello team"))).message
        assert m.id == sent.id and m.group == g and m.conversation == g, m
        assert m.sender_account == b_id and m.status == MessageStatus.RECEIVED()
    await wait_for_event(bob, lambda e: e.is_message_sent() and e.id == sent.id and e.conversation == g)
    # Carol writes too (awaited with reads cancelled every 20 ms on bob's side).
    await carol.send_group_text(g, "hi from carol")
    got = (await wait_for_event(bob, received("hi from carol"), slice_s=0.02)).message
    assert got.group == g and got.sender_account == c_id
    await wait_for_event(dave, received("hi from carol"))

    # Errors: a malformed group id, a group this account is not in, a change by a non-admin.
    e = await expect_error(SottoError.BadGroupId, bob.send_group_text("not a group", "x"))
    assert e.code() == "bad_group_id" and not e.is_retryable()
    e = await expect_error(SottoError.UnknownGroup, bob.send_group_text("0" * 64, "x"))
    assert e.code() == "unknown_group"
    assert await bob.group("0" * 64) is None
    e = await expect_error(SottoError.NotGroupAdmin, carol.remove_group_member(g, d_id))
    assert e.code() == "not_group_admin"

    # Bob renames the group and makes carol an admin; carol sees both.
    await bob.rename_group(g, "team two")
    await bob.set_group_admin(g, c_id, True)
    while (await carol.group(g)).title != "team two" or \
            {m.account: m.role for m in (await carol.group(g)).members}[c_id] != GroupRole.ADMIN:
        await wait_for_event(carol, group_changed(g))

    # Dave is removed: he learns it, and can no longer send to the group.
    await bob.remove_group_member(g, d_id)
    while (await dave.group(g)).active:
        await wait_for_event(dave, group_changed(g))
    await wait_for_members(carol, g, [b_id, c_id])
    e = await expect_error(SottoError.UnknownGroup, dave.send_group_text(g, "still here?"))
    assert e.code() == "unknown_group"
    after = await bob.send_group_text(g, "after dave")
    await wait_for_event(carol, received("after dave"))
    await wait_for_event(bob, lambda e: e.is_message_sent() and e.id == after.id)
    reply = await carol.send_group_text(g, "carol after dave")
    await wait_for_event(bob, received("carol after dave"))
    await wait_for_event(carol, lambda e: e.is_message_sent() and e.id == reply.id)
    # Both were stored by the relay before bob writes to dave directly: once dave has
    # that message, anything of the group's sent to him would have come before it.
    seen = []

    def marker(e):
        if e.is_message_received():
            seen.append(e.message.text)
        return received("just to dave")(e)

    await bob.send_text(d_id, "just to dave")
    await wait_for_event(dave, marker)
    assert seen == ["just to dave"], seen
    history = await dave.group_messages(g, Page())
    assert [(h.text, h.group) for h in history] == [("hello team", g), ("hi from carol", g)], history
    history = await carol.group_messages(g, Page())
    assert [h.text for h in history] == ["hello team", "hi from carol", "after dave", "carol after dave"]
    older = await carol.group_messages(g, Page(before=history[2].order, limit=1))
    assert [h.text for h in older] == ["hi from carol"]

    # Carol leaves; bob sees her go.
    await carol.leave_group(g)
    assert not (await carol.group(g)).active
    await wait_for_members(bob, g, [b_id])
    await carol.shutdown()
    await dave.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # The runtime thread that completed the last call may still be returning from its
    # callback into Python; a normal interpreter exit can race with it (CPython ends such
    # a thread with pthread_exit during finalization, which aborts the process). Every
    # assertion has run: leave without finalizing. See docs/bindings.md.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
