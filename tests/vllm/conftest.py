"""What the vLLM modules share: an OpenAI client of the module's ``gateway``, closed
after the module."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support import Server


@pytest.fixture(scope="module")
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c
