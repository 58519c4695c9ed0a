"""What every config section shares: the error type, the strict base model and URL lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# "fake" launches the deterministic stand-in of llmgw.engines.fake (tests, benchmarks).
EngineType = Literal["transformers", "vllm", "sglang", "openai", "fake"]


class ConfigError(Exception):
    """A config that cannot be served. The message is meant for an operator's eyes."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def first_duplicate(names: list[str]) -> str | None:
    """The first name listed twice, if any (for "declared twice" errors)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _one_is_a_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _http_only(urls: list[str]) -> list[str]:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {url!r}")
    return [u.rstrip("/") for u in urls]


# Attached engines' base URLs: one string or a list, http(s), no trailing slash.
EngineURLs = Annotated[list[str], Field(min_length=1), BeforeValidator(_one_is_a_list),
                       AfterValidator(_http_only)]
