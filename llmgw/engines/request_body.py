"""A request body the gateway rewrote, as the bytes an engine gets.

orjson reads 1024 levels of nesting but writes only 254: a client body nested in between
parses, yet cannot be written back. That is the client's to fix (no real request nests so
deep), so it is a 400, wherever the gateway rewrites a body (model renames, usage on
streams, adapter fields, both legs of a disaggregated request)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from llmgw.errors import InvalidRequest


def encode(body: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequest("request body is nested too deeply for the gateway to rewrite "
                             "it (at most 254 levels)") from None
