"""Pseudonymisation: user ids leave the operators only as keyed HMAC-SHA256 pseudonyms plus the key's id.

A keyed hash (not a plain hash) so nobody without the key can confirm a guessed user id; the key id travels with
every pseudonym so a key rotation can be told apart downstream.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

KEY_ENV = "STREAMREC_PSEUDONYM_KEY"
KEY_ID_ENV = "STREAMREC_PSEUDONYM_KEY_ID"
# Public, documented dev key: only used when the config explicitly allows it (demo); pseudonyms made with it
# protect nothing, which is why its key id says so.
DEV_KEY = b"streamrec-dev-key-not-secret"
DEV_KEY_ID = "dev-insecure"
MIN_KEY_BYTES = 16


class PseudonymKeyError(RuntimeError):
    """No usable pseudonymisation key."""


class Pseudonymizer:
    """HMAC-SHA256 of the user id under a secret key; hex digest, 64 characters."""

    __slots__ = ("_key", "key_id", "_cache")

    def __init__(self, key: bytes, key_id: str) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        if not key_id or not isinstance(key_id, str):
            raise PseudonymKeyError("pseudonym key id must be a non-empty string")
        self._key = key
        self.key_id = key_id
        self._cache: dict[str, str] = {}

    def pseudonym(self, user_id: str) -> str:
        p = self._cache.get(user_id)
        if p is None:
            p = hmac.new(self._key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            if len(self._cache) > 100_000:  # bounded memo: hot users repeat, the tail does not
                self._cache.clear()
            self._cache[user_id] = p
        return p

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymizer(key_id={self.key_id!r})"

    @classmethod
    def from_env(cls, allow_dev_key: bool = False, env: Mapping[str, str] | None = None) -> Pseudonymizer:
        """Key from `STREAMREC_PSEUDONYM_KEY` (hex if it parses as hex, else UTF-8) and its id from
        `STREAMREC_PSEUDONYM_KEY_ID`; the dev key only when `allow_dev_key` (conf `privacy.allow_dev_key`)."""
        e = os.environ if env is None else env
        raw = e.get(KEY_ENV, "")
        if not raw:
            if allow_dev_key:
                return cls(DEV_KEY, DEV_KEY_ID)
            raise PseudonymKeyError(
                f"{KEY_ENV} is not set: set it to a secret of at least {MIN_KEY_BYTES} bytes (hex or text) and "
                f"{KEY_ID_ENV} to its id; for a local demo only, set privacy.allow_dev_key: true"
            )
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = raw.encode("utf-8")
        key_id = e.get(KEY_ID_ENV, "")
        if not key_id:
            raise PseudonymKeyError(f"{KEY_ID_ENV} is not set: name the key (e.g. k2025-01) so it can rotate")
        return cls(key, key_id)
