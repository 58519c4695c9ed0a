"""The ``auth:`` section: API keys (stored as hashes) with their allowlists, limits and
priority, and limits per model across all keys. Without the section, no key is asked for.

A key's secret never appears in a config: ``llmgw key create --name NAME`` prints a new
key once together with the ``hash`` to paste here.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmgw.config.base import _Strict, first_duplicate

# Key names label metrics and name keys in the admin API: short and plain.
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# sha256 of the key's UTF-8 bytes, hex.
KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
Priority = Literal["interactive", "batch"]
# Above any real limit. Bounded so that a limit stays exact as a float (the token buckets)
# and fits the state file's 64-bit integers: POST /admin/keys with rpm 2**73 answered 500
# (the fuzzer found it) when the key could not be written.
MAX_LIMIT = 10**12


class Limits(_Strict):
    """Per minute and at once; null is no limit. Tokens are prompt plus completion
    tokens: estimated from the prompt when a request arrives, corrected by the engine's
    ``usage`` when it ends."""

    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT)

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrency is None


class KeyConfig(Limits):
    name: str = Field(pattern=KEY_NAME)
    hash: str
    # Served names (models, adapters, aliases) the key may use; null: every one. A base
    # model does not grant its adapters: list them too.
    models: list[str] | None = None
    # Tools (``tools:``) the key may list and call; null: every one.
    tools: list[str] | None = None
    # Who waits first when replicas are saturated (a model's admission:): interactive
    # before batch; within a class keys share by weight (2 gets twice 1's turns).
    priority: Priority = "interactive"
    weight: float = Field(default=1.0, gt=0, le=1000)

    @field_validator("hash")
    @classmethod
    def _is_a_hash(cls, value: str) -> str:
        if not KEY_HASH.match(value):
            raise ValueError("must be 'sha256:' and 64 hex digits, as `llmgw key create` "
                             "prints it (the key itself never goes in the config)")
        return value


class AuthConfig(_Strict):
    keys: list[KeyConfig] = Field(default_factory=list)
    # Served model name -> limits across all keys (per gateway instance).
    model_limits: dict[str, Limits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        name = first_duplicate([k.name for k in self.keys])
        if name is not None:
            raise ValueError(f"keys: name {name!r} is declared twice")
        digest = first_duplicate([k.hash for k in self.keys])
        if digest is not None:
            raise ValueError("keys: two keys have the same hash (one secret, two names)")
        return self
