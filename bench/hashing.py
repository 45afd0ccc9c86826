"""sha256 helpers shared by surrogates, targets and data."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def verify_sha256(data: bytes, expected: str, *, what: str, fix: str) -> str:
    """Return the sha256 of ``data``, or raise ``HashMismatch`` naming ``what`` (the file), both hashes and the fix.

    Takes the bytes, not a path, so that a caller hashes exactly what it then loads (no second read of the file).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise HashMismatch(f"{what} has sha256 {actual}, expected {expected}. {fix}")
    return actual


class HashMismatch(ValueError):
    """A file's content is not the content the protocol or the config pins."""
