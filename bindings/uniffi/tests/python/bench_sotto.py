"""Python benchmark of the sotto_ffi binding (docs/benchmarks.md, "Bindings"): the cost of
a trivial call, and 1,000 messages from Alice to Bob through the relay at $SOTTO_RELAY_URL.
Run by `SOTTO_BENCH=1 scripts/bindings.sh python`."""

import asyncio
import os
import sys
import time

from sotto_ffi import ClientOptions, SottoClient, version

RELAY = os.environ["SOTTO_RELAY_URL"]
DIR = os.environ["SOTTO_TEST_DIR"]
CALLS = int(os.environ.get("SOTTO_BENCH_CALLS", "200000"))
MESSAGES = int(os.environ.get("SOTTO_BENCH_MESSAGES", "1000"))
TIMEOUT = 300.0


def per_call_ns(f):
    t0 = time.perf_counter()
    for _ in range(CALLS):
        f()
    return (time.perf_counter() - t0) / CALLS * 1e9


async def count(client, predicate, n):
    got = 0
    while got < n:
        e = await client.next_event()
        assert e is not None
        if predicate(e):
            got += 1


async def main():
    opts = ClientOptions()
    alice = await SottoClient.create_account(os.path.join(DIR, "bench-a.db"), os.urandom(32), RELAY, opts)
    bob = await SottoClient.create_account(os.path.join(DIR, "bench-b.db"), os.urandom(32), RELAY, opts)
    a, b = alice.account_id(), bob.account_id()
    await alice.add_contact(b)
    await bob.add_contact(a)

    def py_baseline():
        return None

    base = per_call_ns(py_baseline)
    dev = per_call_ns(alice.device_id)
    ver = per_call_ns(version)
    print(f"python: trivial calls over {CALLS}: device_id() {dev:.0f} ns, version() {ver:.0f} ns, "
          f"empty Python function {base:.0f} ns")

    # Warm-up: sessions exist both ways before timing.
    await alice.send_text(b, "warm-up")
    await asyncio.wait_for(count(bob, lambda e: e.is_message_received(), 1), TIMEOUT)
    await bob.send_text(a, "warm-up")
    await asyncio.wait_for(count(alice, lambda e: e.is_message_received(), 1), TIMEOUT)

    t0 = time.perf_counter()
    received = asyncio.create_task(count(bob, lambda e: e.is_message_received(), MESSAGES))
    sent = asyncio.create_task(count(alice, lambda e: e.is_message_sent(), MESSAGES))
    for i in range(MESSAGES):
        await alice.send_text(b, f"message {i}")
    queued = time.perf_counter() - t0
    await asyncio.wait_for(received, TIMEOUT)
    t_recv = time.perf_counter() - t0
    await asyncio.wait_for(sent, TIMEOUT)
    t_sent = time.perf_counter() - t0
    print(f"python: {MESSAGES} messages: queued in {queued:.2f} s, all received by Bob in {t_recv:.2f} s "
          f"({MESSAGES / t_recv:.0f} msg/s), all confirmed sent to Alice in {t_sent:.2f} s")
    await alice.shutdown()
    await bob.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)  # see test_sotto.py
