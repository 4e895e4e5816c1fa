"""`python -m service verify-audit FILE`: checks an audit log's hash chain.

Prints "ok: N records" and the chain head (exit 0), or names the first line that breaks
the chain — edited, removed, inserted, moved, cut short, not JSON — (exit 1). A file
that cannot be read exits 2. The file is read line by line, so it may be large.
"""

from __future__ import annotations

import sys

from service.audit.chain import verify_lines

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_UNREADABLE = 2


def verify_main(path: str) -> int:
    try:
        with open(path, "rb") as lines:
            result = verify_lines(lines)
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if result.ok:
        print(f"ok: {result.records} records")
        print(f"head: {result.head}")
        return EXIT_OK
    print(f"{path}: line {result.broken_line}: {result.problem}")
    print(f"broken: {result.records} records verified before line {result.broken_line}")
    return EXIT_BROKEN
