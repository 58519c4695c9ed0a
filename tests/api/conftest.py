"""A real gateway process in front of real fake-engine processes (llmgw.engines.fake is a
deterministic OpenAI-compatible server; the real embedded engine is in tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import Server, start_fake_engine, start_gateway, wait_until


@pytest.fixture(scope="module")
def engines() -> Iterator[list[Server]]:
    servers = [start_fake_engine("--token-delay-ms", "2") for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def gateway(engines: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "server": {"max_body_bytes": 64 * 1024},
        "health": {"interval_s": 0.5},
        "models": [
            {"name": "fake", "engine": "openai", "url": [e.url for e in engines]},
            {"name": "renamed", "engine": "openai", "url": [engines[0].url],
             "served_model_name": "fake"},
        ],
    }
    server = start_gateway(config, tmp_path_factory.mktemp("gw"))
    # /ready needs one healthy replica per model; the tests here need every replica in
    # rotation (attached engines join at their first health check).
    wait_until(lambda: all(
        f'llmgw_replica_healthy{{model="fake",replica="fake-{i}"}} 1.0'
        in httpx.get(server.url + "/metrics").text for i in range(2)), 30,
        "both replicas healthy")
    yield server
    server.stop()


@pytest.fixture
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    # Closed after the test: an unclosed client's socket surfaces later as a
    # ResourceWarning, which this suite turns into another test's error.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path
