"""OpenAI's embeddings answer, shared by the engine servers that llmgw ships (the embedded
engine and the fake): ``{"object": "list", "data": [...], "model", "usage"}``."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any, Literal

EncodingFormat = Literal["float", "base64"]


def embeddings_answer(vectors: Sequence[Sequence[float]], model: str, prompt_tokens: int,
                      encoding_format: EncodingFormat = "float") -> dict[str, Any]:
    """``base64``: each vector's little-endian float32 bytes, base64-encoded, as OpenAI
    sends them (the ``openai`` SDK asks for it by default and decodes it)."""
    data = [{"object": "embedding", "index": index,
             "embedding": _base64(vector) if encoding_format == "base64" else list(vector)}
            for index, vector in enumerate(vectors)]
    return {"object": "list", "model": model, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
