"""The key state file (``<server.state_dir>/keys.json``): keys made and revoked through
the admin API, kept across restarts and reloads. Written only by the keystore, read as
untrusted input (a bad entry is reported and skipped, never fatal at start).

    {"registered": {"<name>": {"hash": "sha256:...", "models": [...] | null, "rpm": ...,
                               "tpm": ..., "max_concurrency": ..., "priority": ...,
                               "weight": ...}},
     "revoked": ["sha256:<hash of a configured key revoked at runtime>", ...]}

Revocations are kept by hash: a configured key given a new secret (a new hash) under
the same name is a new key, not a revoked one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from llmgw.config import ConfigError, GatewayConfig, KeyConfig
from llmgw.config.auth import KEY_HASH
from llmgw.state_file import read_object, replace, unusable
from llmgw.tenancy.keys import ApiKey

STATE_FILE = "keys.json"  # under server.state_dir


def state_path(cfg: GatewayConfig) -> Path:
    return Path(os.path.expanduser(cfg.server.state_dir)) / STATE_FILE


@dataclass(frozen=True, slots=True)
class SavedKeys:
    registered: dict[str, ApiKey] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()
    # Entries of the wrong shape, each in words.
    problems: list[str] = field(default_factory=list)


def read_keys(path: Path) -> SavedKeys:
    """The saved keys (none when there is no file). Raises StateError."""
    data = read_object(path) or {}
    problems: list[str] = []
    registered: dict[str, ApiKey] = {}
    entries = data.get("registered", {})
    if not isinstance(entries, dict):
        problems.append("registered must be an object")
        entries = {}
    for name, entry in entries.items():
        try:
            spec = KeyConfig.model_validate({**entry, "name": name}
                                            if isinstance(entry, dict) else entry)
        except ValidationError as exc:
            problems.append(f"registered[{name!r}]: {exc.errors()[0]['msg']}")
            continue
        registered[name] = ApiKey.from_config(spec, origin="runtime")
    revoked = data.get("revoked", [])
    if not isinstance(revoked, list):
        problems.append("revoked must be a list")
        revoked = []
    for i, digest in enumerate(revoked):
        if not isinstance(digest, str) or not KEY_HASH.match(digest):
            problems.append(f"revoked[{i}] must be a key hash")
    return SavedKeys(registered, frozenset(d for d in revoked if isinstance(d, str)
                                           and KEY_HASH.match(d)), problems)


def write_keys(path: Path, registered: Iterable[ApiKey], revoked: Iterable[str]) -> None:
    """Replace the file atomically. Raises OSError; then the old file is untouched."""
    replace(path, {
        "registered": {k.name: {"hash": k.hash, "models": sorted(k.models)
                                if k.models is not None else None,
                                **k.limits.model_dump(), "priority": k.priority,
                                "weight": k.weight, "tools": sorted(k.tools)
                                if k.tools is not None else None}
                       for k in registered},
        "revoked": sorted(revoked)})


def check_store(cfg: GatewayConfig) -> None:
    """With ``auth:``: the state directory must be writable (a key made at runtime that
    cannot be kept is refused) and the key file readable. Raises ConfigError."""
    if cfg.auth is None:
        return
    problem = unusable(state_path(cfg), read_keys, "key")
    if problem is not None:
        raise ConfigError(f"server.state_dir: {problem}")
