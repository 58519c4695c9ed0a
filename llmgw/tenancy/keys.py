"""API keys: made, hashed and looked up. The gateway keeps only hashes; a key's secret is
shown once, when it is made.

Keys are 256 random bits, so a plain SHA-256 is the right hash (no salt or slow hash
needed: there is no dictionary to guess from), and lookup by hash costs one dict access.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from llmgw.config import KeyConfig, Limits, Priority
from llmgw.config.auth import KEY_NAME

KEY_PREFIX = "llmgw-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key_text(name: str) -> str:
    """What `llmgw key create --name NAME` prints: a new key, once, and the config entry
    that holds its hash. Raises ValueError for a name the config would refuse."""
    if not re.match(KEY_NAME, name):
        raise ValueError(f"--name: {name!r} is not a key name (letters, digits, '.', '_', "
                         "'-'; at most 64)")
    key = new_key()
    return (f"key: {key}\n"
            "Give it to its user now: the gateway keeps only its hash, so it cannot be "
            "shown again.\nAdd under auth.keys in the config:\n"
            f'  - {{name: {name}, hash: "{hash_key(key)}"}}\n')


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the gateway knows it: never its secret. ``models`` None allows every
    served name."""

    name: str
    hash: str
    models: frozenset[str] | None = None
    limits: Limits = Limits()
    priority: Priority = "interactive"
    origin: Literal["config", "runtime"] = "config"
    weight: float = 1.0
    # Tool names the key may list and call; None: every tool.
    tools: frozenset[str] | None = None

    @classmethod
    def from_config(cls, spec: KeyConfig,
                    origin: Literal["config", "runtime"] = "config") -> ApiKey:
        return cls(spec.name, spec.hash,
                   frozenset(spec.models) if spec.models is not None else None,
                   Limits(rpm=spec.rpm, tpm=spec.tpm, max_concurrency=spec.max_concurrency),
                   spec.priority, origin, spec.weight,
                   frozenset(spec.tools) if spec.tools is not None else None)

    def allows(self, name: str) -> bool:
        return self.models is None or name in self.models

    def allows_tool(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    def describe(self) -> dict[str, object]:
        """What the admin API shows: everything but the hash."""
        return {"name": self.name, "models": sorted(self.models) if self.models is not None
                else None, **self.limits.model_dump(), "priority": self.priority,
                "weight": self.weight, "origin": self.origin,
                "tools": sorted(self.tools) if self.tools is not None else None}


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: ``Authorization: Bearer KEY`` (any SDK) or ``api-key: KEY``
    (Azure-style SDKs). Empty is none."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    token = headers.get("api-key", "").strip()
    return token or None


class KeyRing:
    """The keys in effect, by name and by hash. One event loop; not thread-safe."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_name: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        for key in keys:
            self.put(key)

    def authenticate(self, token: str) -> ApiKey | None:
        key = self._by_hash.get(hash_key(token))
        # The dict found it by hash; compare again in constant time all the same.
        if key is None or not hmac.compare_digest(key.hash, hash_key(token)):
            return None
        return key

    def get(self, name: str) -> ApiKey | None:
        return self._by_name.get(name)

    def all(self) -> list[ApiKey]:
        return sorted(self._by_name.values(), key=lambda k: k.name)

    def put(self, key: ApiKey) -> None:
        old = self._by_name.pop(key.name, None)
        if old is not None:
            self._by_hash.pop(old.hash, None)
        self._by_name[key.name] = key
        self._by_hash[key.hash] = key

    def pop(self, name: str) -> ApiKey | None:
        key = self._by_name.pop(name, None)
        if key is not None:
            self._by_hash.pop(key.hash, None)
        return key
