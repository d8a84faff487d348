"""API keys: which configured key, if any, a request presents.

Only SHA-256 digests of the keys are kept here. They make every comparison
one of equal lengths (so its time tells nothing about a key's length), and
they name a key's rate-limit bucket without the key itself ever being stored
in a bucket, a Redis key or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

_BEARER = b"bearer "


class ApiKeys:
    """The API_KEYS setting, checked in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The id of the key the request presents, or None when it presents none that is valid.

        The id is a hex digest prefix: stable across processes and machines, so
        every API instance charges one key's requests to one bucket.
        """
        presented = _presented(headers)
        if presented is None:
            return None
        digest = hashlib.sha256(presented).digest()
        found = None
        # Every key is compared, so the time taken does not say which one matched.
        for candidate in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = candidate
        return None if found is None else found.hex()[:32]


def _presented(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """`Authorization: Bearer KEY`, else `X-API-Key: KEY` (ASGI header names are lower case)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == _BEARER:
            return value[7:].strip()
        if name == b"x-api-key":
            api_key = value.strip()
    return api_key
