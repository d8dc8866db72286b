"""Checks the Python column of the API table in docs/bindings.md against the generated
module: every name it gives exists, and every call lists the parameters the generated
function takes, in order (records: a subset of their keyword arguments). Run by
scripts/bindings.sh:

    PYTHONPATH=bindings/generated/python python3 check_docs.py docs/bindings.md
"""

import inspect
import re
import sys

import sotto_ffi

OWNERS = (
    "SottoClient", "PendingJoin", "Subscription", "EventListener", "ConversationList", "Timeline", "ListSubscription",
    "TimelineListener", "ConversationListListener", "NotificationExtension", "CancelToken", "AttachmentReader",
)
RECORDS = ("Page", "ClientOptions")


def candidates(name):
    parts = name.split(".")
    if len(parts) == 2:
        found = [getattr(getattr(sotto_ffi, parts[0], None), parts[1], None)]
    else:
        found = [getattr(getattr(sotto_ffi, o), name, None) for o in OWNERS] + [getattr(sotto_ffi, name, None)]
    return [f for f in found if f is not None]


def main(path):
    doc = open(path, encoding="utf-8").read()
    table = doc[doc.index("| Kotlin, Swift | Python |"):]
    table = table[:table.index("\n\n")]
    problems, calls = [], 0
    for row in table.splitlines()[2:]:
        for code in re.findall(r"`([^`]+)`", row.split("|")[2]):
            for name, args in re.findall(r"([A-Za-z_.]+)\(([^()]*)\)", code):
                calls += 1
                found = candidates(name)
                if not found:
                    problems.append(f"{name}: not in the generated module")
                    continue
                want = [a.split("=")[0].strip() for a in args.split(",") if a.strip()]
                fits = False
                for f in found:
                    params = [p for p in inspect.signature(f).parameters if p != "self"]
                    fits |= set(want) <= set(params) if name in RECORDS else want == params
                if not fits:
                    problems.append(f"{name}({', '.join(want)}): the generated one takes {params}")
    for p in problems:
        print(f"docs/bindings.md: {p}", file=sys.stderr)
    assert calls > 40, f"only {calls} calls found: has the table's header changed?"
    if problems:
        return 1
    print(f"python: the {calls} calls in docs/bindings.md's Python column match the generated module")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
