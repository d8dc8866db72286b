"""Attachments, push registration and the notification extension through the binding.

Alice sends Bob a file from bytes and one from a path, with progress; Bob downloads both
(to bytes and to a path) and gets them back exactly; a cancelled upload and a missing
file are typed errors. Bob registers a push token and removes it. With Bob's app shut
down, his notification extension opens the same store, fetches what Alice sent meanwhile
and returns what to show; while his app runs, the extension is told the app is active.
"""

import asyncio
import os

from sotto_ffi import (AttachmentInfo, CancelToken, ClientOptions, Conversation, MessageKey,
                       NotificationExtension, Page, ProgressListener, PushService, SottoClient, SottoError)

TIMEOUT = 30.0


class Progress(ProgressListener):
    def __init__(self):
        self.calls = []

    def on_progress(self, done, total):
        self.calls.append((done, total))


async def received(client, text):
    """Waits for the message with this text; returns it."""
    async def read():
        while True:
            e = await client.next_event()
            assert e is not None, "the event stream ended"
            if e.is_message_received() and e.message.text == text:
                return e.message
    return await asyncio.wait_for(read(), TIMEOUT)


async def media(relay, folder):
    os.makedirs(folder, exist_ok=True)
    key_a, key_b = os.urandom(32), os.urandom(32)
    path_a, path_b = os.path.join(folder, "alice.db"), os.path.join(folder, "bob.db")
    opts = ClientOptions()
    alice = await SottoClient.create_account(path_a, key_a, relay, opts)
    bob = await SottoClient.create_account(path_b, key_b, relay, opts)
    a_id, b_id = alice.account_id(), bob.account_id()
    await alice.add_contact(bob.contact_link())
    await bob.add_contact(a_id)
    to_bob = Conversation.DIRECT(b_id)

    photo = os.urandom(200_000)
    progress = Progress()
    info = AttachmentInfo(media_type="image/png", file_name="cat.png", caption="our cat", thumbnail=b"\x89PNG")
    item = await alice.send_attachment_bytes(to_bob, photo, info, progress, None)
    assert item.attachment.size == len(photo) and item.attachment.file_name == "cat.png", item
    assert progress.calls and progress.calls[-1][0] == progress.calls[-1][1], progress.calls
    m = await received(bob, "our cat")
    key = MessageKey(conversation=Conversation.DIRECT(a_id), sender=a_id, id=m.id)
    assert await bob.download_attachment_bytes(key) == photo
    reader = await bob.open_attachment(key)
    assert reader.ciphertext_len() > len(photo)
    pieces = []
    while (piece := await reader.next_chunk()) is not None:
        pieces.append(piece)
    assert b"".join(pieces) == photo, "the photo read piece by piece came back changed"
    # Read again with every wait cancelled after 1 ms: a cancelled wait loses no piece.
    reader = await bob.open_attachment(key)
    pieces, cancelled = [], 0
    while True:
        try:
            ready = await asyncio.wait_for(reader.wait_chunk(), 0.001)
        except asyncio.TimeoutError:
            cancelled += 1
            continue
        if not ready:
            break
        pieces.append(reader.take_chunk())
        assert reader.take_chunk() is None
    assert b"".join(pieces) == photo, "the photo read with cancelled waits came back changed"

    source = os.path.join(folder, "notes.txt")
    with open(source, "wb") as f:
        f.write(b"minutes of the meeting\n" * 5000)
    await alice.send_attachment_file(to_bob, source, AttachmentInfo(media_type="text/plain", caption="notes"), None, None)
    m = await received(bob, "notes")
    key = MessageKey(conversation=Conversation.DIRECT(a_id), sender=a_id, id=m.id)
    dest = os.path.join(folder, "received.txt")
    await bob.download_attachment(key, dest, None, None)
    with open(dest, "rb") as f, open(source, "rb") as g:
        assert f.read() == g.read()

    cancel = CancelToken()
    cancel.cancel()
    try:
        await alice.send_attachment_bytes(to_bob, photo, AttachmentInfo(), None, cancel)
        raise AssertionError("a cancelled upload went")
    except SottoError.Cancelled as e:
        assert e.code() == "cancelled"
    try:
        await alice.send_attachment_file(to_bob, os.path.join(folder, "missing"), AttachmentInfo(), None, None)
        raise AssertionError("a missing file went")
    except SottoError.File as e:
        assert e.code() == "file"

    await bob.register_push(PushService.FCM, b"fcm-registration-token")
    await bob.unregister_push()

    # While Bob's app runs, his extension has nothing to do.
    ext = await NotificationExtension.open(path_b, key_b, opts)
    fetched = await ext.fetch(10_000)
    assert fetched.app_active and not fetched.notifications, fetched
    # With the app shut down, the extension shows what arrived.
    await bob.shutdown()
    sent = await alice.send_text(b_id, "are you there?")

    async def stored():
        while True:
            e = await alice.next_event()
            if e.is_message_sent() and e.id == sent.id:
                return
    await asyncio.wait_for(stored(), TIMEOUT)
    fetched = await ext.fetch(10_000)
    assert fetched.complete and not fetched.app_active, fetched
    assert [(n.body, n.key.sender) for n in fetched.notifications] == [("are you there?", a_id)], fetched
    # Fetched once: the next fetch finds nothing, and the app, reopened, shows it stored.
    assert not (await ext.fetch(5_000)).notifications
    bob = await SottoClient.open(path_b, key_b, ClientOptions(connect=False))
    history = [h.text for h in await bob.messages(a_id, Page())]
    assert history.count("are you there?") == 1, history
    await bob.shutdown()
    await alice.shutdown()
    print("python: attachments, push registration and the notification extension")
