"""Engines' runtime LoRA APIs: load, unload and list adapters on one replica.

vLLM (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and the embedded engine:
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``, ``POST /v1/unload_lora_adapter
{"lora_name"}``, and ``GET /v1/models`` lists loaded adapters as entries with a
``parent``. A request names its adapter in ``model``. SGLang: ``POST /load_lora_adapter``
and ``/unload_lora_adapter`` with the same fields; a request names the adapter in
``lora_path``; it has no listing the gateway relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import orjson

from llmgw.errors import UpstreamUnreachable


class AdapterLoadError(Exception):
    """The engine refused or failed to load an adapter; the message is the engine's."""


@dataclass(frozen=True, slots=True)
class AdapterAPI:
    load_path: str
    unload_path: str
    list_path: str | None  # None: the engine does not list its adapters
    # The request body field that names the adapter.
    request_field: str = "model"


VLLM_ADAPTER_API = AdapterAPI("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/models")
SGLANG_ADAPTER_API = AdapterAPI("/load_lora_adapter", "/unload_lora_adapter", None, "lora_path")


class AdapterClient:
    """One replica's adapter API over the gateway's shared HTTP session."""

    def __init__(self, url: str, session: aiohttp.ClientSession, api: AdapterAPI,
                 timeout_s: float) -> None:
        self.url, self._session, self.api = url, session, api
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def request_fields(self, adapter: str) -> dict[str, str]:
        return {self.api.request_field: adapter}

    async def load(self, name: str, source: str) -> None:
        status, body = await self._post(self.api.load_path,
                                        {"lora_name": name, "lora_path": source})
        if status >= 300:
            raise AdapterLoadError(_message(body) or f"the engine answered {status}")

    async def unload(self, name: str) -> bool:
        status, _ = await self._post(self.api.unload_path, {"lora_name": name})
        return status < 300

    async def loaded(self) -> set[str] | None:
        """The adapters the engine reports holding; None when it cannot say."""
        if self.api.list_path is None:
            return None
        try:
            async with self._session.get(self.url + self.api.list_path,
                                         timeout=self._timeout) as response:
                if response.status != 200:
                    return None
                data = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None
        entries = data.get("data") if isinstance(data, dict) else None
        return {str(e["id"]) for e in entries or []
                if isinstance(e, dict) and e.get("parent") and "id" in e}

    async def _post(self, path: str, payload: dict[str, str]) -> tuple[int, bytes]:
        try:
            async with self._session.post(self.url + path, data=orjson.dumps(payload),
                                          headers={"content-type": "application/json"},
                                          timeout=self._timeout) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"engine at {self.url} unreachable: {exc!r}") from None


def _message(body: bytes) -> str:
    """vLLM answers errors as OpenAI JSON, success and some errors as plain text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace").strip()[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or "")[:500]
    return str(data)[:500]
