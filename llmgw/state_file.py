"""JSON state files under ``server.state_dir`` (runtime adapters, API keys): read as
untrusted input, replaced atomically. Each owner (llmgw.lora.state, llmgw.tenancy.store)
checks its own entries; this module knows only files and JSON objects."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol


class StateError(Exception):
    """The file as a whole cannot be used: unreadable, not JSON, or not an object. The
    message names the file."""


def read_object(path: Path) -> dict[str, Any] | None:
    """The file's top-level JSON object, None when there is no file. Raises StateError."""
    if not path.exists():
        return None
    if not path.is_file():
        raise StateError(f"{path} is not a regular file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: the top level must be an object")
    return data


def replace(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically (a crash leaves the old or the new state). Raises
    OSError; then the old file is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def unwritable(directory: Path) -> str | None:
    """Why the gateway could not write files in ``directory`` (creating it), if it could
    not."""
    if directory.exists():
        if not directory.is_dir():
            return f"{directory} is not a directory"
        return None if os.access(directory, os.W_OK | os.X_OK) \
            else f"{directory} is not writable"
    ancestor = next(p for p in directory.parents if p.exists())
    if not ancestor.is_dir():
        return f"{directory} cannot be created: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{directory} cannot be created: {ancestor} is not writable"
    return None


class Checked(Protocol):
    """What an owner reads a state file into: its entries, and those it refused."""

    @property
    def problems(self) -> Sequence[str]: ...


def unusable(file: Path, read: Callable[[Path], Checked | None], what: str) -> str | None:
    """Why a state file cannot be used, checked at start (its directory unwritable, the
    file unreadable, entries refused), if it cannot: a runtime change that could not be
    kept is refused, so an unwritable directory is found now, not by the first change."""
    problem = unwritable(file.parent)
    if problem is not None:
        return problem
    try:
        saved = read(file)
    except StateError as exc:
        return f"the {what} state file {exc}; fix or remove it"
    if saved is not None and saved.problems:
        return f"the {what} state file {file}: {'; '.join(saved.problems)}; fix or remove it"
    return None
