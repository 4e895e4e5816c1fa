"""PLACEHOLDER: `python -m service verify-audit FILE`."""

from __future__ import annotations


def verify_main(path: str) -> int:
    raise NotImplementedError
