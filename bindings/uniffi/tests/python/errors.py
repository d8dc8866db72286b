"""Every SottoError case, with its stable code() and is_retryable(), in Python.

Each case is provoked through a real call where a call can provoke it; the others are
constructed here and their code() is asked of the Rust side all the same (the error is
lowered into Rust for the call). Those others are a store written by another process at
the same moment (store_conflict), a contact's device list that does not verify
(device_list: it takes a relay that serves a forged list), a join that nobody answers
(link_timeout: five minutes), a failing sender-key encryption (sender_key), a panic in
the binding (internal) and a failing OS random generator (entropy); the unit tests in
bindings/uniffi/src/lib.rs map the SDK errors behind them to these cases.

The chat errors come from real calls too: a text over 64 KiB (too_long), a timer over a
year (timer_too_long), retrying a message that has not failed (not_queued), editing a
message that does not exist (unknown_message) and one the contact wrote (not_author),
sending to a blocked contact (blocked), sending to a contact whose account linked a
second device since (identity_unacknowledged), and opening a store a client of this
process runs (device_in_use).
"""

import asyncio
import os
import time

from sotto_ffi import ClientOptions, Conversation, MessageKey, PendingJoin, SottoClient, SottoError

# Every case's stable code and whether it is retryable; the same table is in lib.rs's
# unit tests and the Swift and Kotlin tests.
CODES = {
    "WrongStoreKey": ("wrong_store_key", False),
    "StoreConflict": ("store_conflict", True),
    "Store": ("store", False),
    "Network": ("network", True),
    "Relay": ("relay", None),  # the relay's code decides
    "Transport": ("transport", False),
    "Refused": ("refused", False),
    "DeviceList": ("device_list", False),
    "AccountExists": ("account_exists", False),
    "NoAccount": ("no_account", False),
    "BadContact": ("bad_contact", False),
    "UnknownContact": ("unknown_contact", False),
    "BadLinkCode": ("bad_link_code", False),
    "Link": ("link", False),
    "NoAccountKey": ("no_account_key", False),
    "NoListKey": ("no_list_key", False),
    "NeedsRecoveryKey": ("needs_recovery_key", False),
    "BadRecoveryKey": ("bad_recovery_key", False),
    "UnknownLinkRequest": ("unknown_link_request", False),
    "LinkTimeout": ("link_timeout", False),
    "BadGroupId": ("bad_group_id", False),
    "UnknownGroup": ("unknown_group", False),
    "NotGroupAdmin": ("not_group_admin", False),
    "Group": ("group", False),
    "SenderKey": ("sender_key", False),
    "InvalidArgument": ("invalid_argument", False),
    "Closed": ("closed", False),
    "Internal": ("internal", False),
    "Entropy": ("entropy", False),
    "UnknownMessage": ("unknown_message", False),
    "NotAuthor": ("not_author", False),
    "NotQueued": ("not_queued", False),
    "Blocked": ("blocked", False),
    "IdentityUnacknowledged": ("identity_unacknowledged", False),
    "TooLong": ("too_long", False),
    "TimerTooLong": ("timer_too_long", False),
    "DeviceInUse": ("device_in_use", True),
    "AttachmentCorrupt": ("attachment_corrupt", False),
    "Cancelled": ("cancelled", False),
    "File": ("file", False),
}


def variants():
    """The case classes the generated module defines."""
    return {
        name for name, v in vars(SottoError).items()
        if isinstance(v, type) and issubclass(v, Exception) and not name.startswith("_")
    }


class Seen:
    def __init__(self):
        self.provoked, self.constructed = set(), set()

    def check(self, e, retryable=None, provoked=True):
        name = type(e).__name__
        code, expected = CODES[name]
        if expected is None:
            expected = retryable
        assert e.code() == code, (name, e.code())
        assert e.is_retryable() == expected, (name, e.is_retryable())
        (self.provoked if provoked else self.constructed).add(name)
        return e

    async def expect(self, cls, coro, retryable=None):
        try:
            await coro
        except SottoError as e:
            assert isinstance(e, cls), f"expected {cls.__name__}, got {e!r}"
            return self.check(e, retryable)
        raise AssertionError(f"expected {cls.__name__}")


async def next_event(client, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        e = await asyncio.wait_for(client.next_event(), max(0.0, deadline - time.monotonic()))
        assert e is not None, "the event stream ended"
        if predicate(e):
            return e


async def every_error(relay, folder):
    assert variants() == set(CODES), sorted(variants() ^ set(CODES))
    seen = Seen()
    opts = ClientOptions()
    key = os.urandom(32)
    path = os.path.join(folder, "erin.db")

    def new_path(name):
        return os.path.join(folder, name)

    # The store and its key.
    await seen.expect(SottoError.InvalidArgument, SottoClient.open(path, b"short", opts))
    await seen.expect(SottoError.NoAccount, SottoClient.open(new_path("none.db"), key, opts))
    await seen.expect(SottoError.Store, SottoClient.open(folder, key, opts))  # a directory
    # The relay URL and the network.
    await seen.expect(SottoError.Transport,
                      SottoClient.create_account(new_path("t.db"), key, "ftp://relay.example", opts))
    await seen.expect(SottoError.Network,
                      SottoClient.create_account(new_path("n.db"), key, "http://127.0.0.1:1", opts))

    erin = await SottoClient.create_account(path, key, relay, opts)
    me = erin.account_id()
    await seen.expect(SottoError.AccountExists, SottoClient.create_account(path, key, relay, opts))

    # Contacts: an id nobody registered (the same id with another first character).
    stranger = ("b" if me[0] == "a" else "a") + me[1:]
    await seen.expect(SottoError.BadContact, erin.send_text("not an account", "x"))
    await seen.expect(SottoError.UnknownContact, erin.safety_number(stranger))
    e = await seen.expect(SottoError.Relay, erin.add_contact(stranger), retryable=False)
    assert (e.status, e.relay_code, e.relay_code_name, e.retryable) == (404, 20, "UNKNOWN_ACCOUNT", False), e
    await seen.expect(SottoError.Refused, erin.send_text(me, "to myself"))
    e = await seen.expect(SottoError.DeviceInUse, SottoClient.open(path, key, opts))
    assert e.role == "app", e

    # Chat, with Frank: a contact both ways.
    frank = await SottoClient.create_account(new_path("frank.db"), os.urandom(32), relay, opts)
    f = await erin.add_contact(frank.contact_link())
    await frank.add_contact(erin.contact_link())
    to_frank = Conversation.DIRECT(f)
    e = await seen.expect(SottoError.TooLong, erin.send_message(to_frank, "x" * (64 * 1024 + 1)))
    assert (e.len, e.max) == (64 * 1024 + 1, 64 * 1024), e
    e = await seen.expect(SottoError.TimerTooLong, erin.set_timer(to_frank, 400 * 24 * 3600))
    assert e.max_s == 366 * 24 * 3600, e
    mine = await erin.send_message(to_frank, "hi frank")
    await seen.expect(SottoError.NotQueued, erin.retry(mine.key))  # it has not failed
    nothing = MessageKey(conversation=to_frank, sender=me, id="00000000-0000-7000-8000-000000000000")
    await seen.expect(SottoError.UnknownMessage, erin.edit(nothing, "x"))
    await frank.send_message(Conversation.DIRECT(me), "hi erin")
    theirs = (await next_event(erin, lambda e: e.is_message_received() and e.message.text == "hi erin")).message
    await seen.expect(SottoError.NotAuthor, erin.edit(MessageKey(conversation=to_frank, sender=theirs.sender_account, id=theirs.id), "x"))
    await erin.block(f)
    await seen.expect(SottoError.Blocked, erin.send_message(to_frank, "blocked"))
    await erin.unblock(f)

    # Devices: a second device that is given the list key.
    await seen.expect(SottoError.BadLinkCode, PendingJoin.start_join(
        new_path("x.db"), os.urandom(32), relay, "sotto-link:nonsense", "x", opts))
    code = await erin.link_new_device()
    pending = await PendingJoin.start_join(new_path("erin2.db"), os.urandom(32), relay, code, "erin 2", opts)
    req = await next_event(erin, lambda e: e.is_link_requested())
    await seen.expect(SottoError.UnknownLinkRequest, erin.confirm_link(req.id ^ 1, True))
    await erin.confirm_link(req.id, True)
    erin2 = await pending.wait_joined()
    await seen.expect(SottoError.Closed, pending.wait_joined())  # callable once
    # Frank's next send learns Erin's new device (the relay answers with her device
    # list): her safety number changed, and his sends wait for him to acknowledge it.
    # (The SDK does not emit IdentityChanged for it yet: DeviceListChanged is awaited.)
    await frank.send_message(Conversation.DIRECT(me), "after the second device")
    await next_event(frank, lambda e: e.is_device_list_changed() and e.account == me and erin2.device_id() in e.added)
    await seen.expect(SottoError.IdentityUnacknowledged, frank.send_message(Conversation.DIRECT(me), "x"))
    await frank.acknowledge_identity(me)
    await frank.send_message(Conversation.DIRECT(me), "acknowledged")
    await seen.expect(SottoError.NeedsRecoveryKey, erin.remove_device(erin2.device_id()))
    await seen.expect(SottoError.Link, erin.remove_device(erin.device_id()))  # itself
    rk = await erin.export_recovery_key()
    await seen.expect(SottoError.NoAccountKey, erin.export_recovery_key())
    await seen.expect(SottoError.BadRecoveryKey,
                      erin2.recover_account(rk[:-1] + ("1" if rk[-1] == "0" else "0")))
    # The second device takes a new list key: the first one's stops counting.
    await erin2.recover_account(rk)
    await seen.expect(SottoError.NoListKey, erin.remove_device(erin2.device_id()))

    # Groups.
    await seen.expect(SottoError.BadGroupId, erin.send_group_text("not a group", "x"))
    await seen.expect(SottoError.UnknownGroup, erin.send_group_text("0" * 64, "x"))
    g = await erin.create_group("team", [f])
    await seen.expect(SottoError.Group, erin.add_group_members(g, []))  # a change without changes
    await next_event(frank, lambda e: e.is_group_changed() and e.group == g)  # the welcome
    await seen.expect(SottoError.NotGroupAdmin, frank.rename_group(g, "renamed"))

    await frank.shutdown()
    await erin2.shutdown()
    await erin.shutdown()
    await seen.expect(SottoError.Closed, erin.conversations())
    # Once no client runs the store (while one does, opening it is DeviceInUse).
    await seen.expect(SottoError.WrongStoreKey, SottoClient.open(path, os.urandom(32), opts))

    # The cases no call here can provoke (see the module's docstring).
    for e in (SottoError.StoreConflict(), SottoError.DeviceList("forged"), SottoError.LinkTimeout(),
              SottoError.SenderKey("r"), SottoError.Internal("r"), SottoError.Entropy(),
              SottoError.AttachmentCorrupt("r"), SottoError.Cancelled(), SottoError.File("r")):
        seen.check(e, provoked=False)
    # A retryable relay refusal, built by hand: the field is relay_code, so code() is
    # still the method.
    e = SottoError.Relay(429, 40, "RATE_LIMITED", True)
    assert seen.check(e, retryable=True, provoked=False).relay_code == 40

    assert seen.provoked | seen.constructed == set(CODES), sorted(set(CODES) - seen.provoked - seen.constructed)
    print(f"python: {len(seen.provoked)} error cases provoked, {len(seen.constructed - seen.provoked)} constructed")
