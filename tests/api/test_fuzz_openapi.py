"""The published OpenAPI document, fuzzed with schemathesis against a real gateway process
in front of real fake engines: every route it describes (admin routes with the admin
key), without auth: and with it (a client key on /v1). Positive and negative examples,
bounded for CI: no 5xx, answers as the document says (status codes, content types, JSON
bodies), none hangs, and afterwards every in-flight gauge is back at 0."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    NegativeDataRejectionConfig,
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from llmgw.tenancy.keys import hash_key
from tests.support import Server, start_fake_engine, start_gateway

ADMIN_KEY = "fuzz-admin-key"
CLIENT_KEY = "fuzz-client-key"
# Small bounds, published in the document: generated requests stay short generations.
BOUNDS = {"max_n": 2, "max_tokens": 32, "max_messages": 16}
# Per operation and mode (positive, negative), 20 operations: the file takes about 20 s on
# this 2-core box idle and under a minute while other tests load it, for both
# gateways (without and with auth:).
EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def engines() -> Iterator[list[Server]]:
    servers = [start_fake_engine() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module", params=["open", "keyed"])
def gateway(request: pytest.FixtureRequest, engines: list[Server],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config: dict[str, Any] = {
        "server": {"admin_key": ADMIN_KEY, "state_dir": str(tmp / "state"),
                   "max_body_bytes": 64 * 1024, "request_bounds": BOUNDS},
        "models": [{"name": "fake", "engine": "openai", "url": [e.url for e in engines]}],
    }
    if request.param == "keyed":
        config["auth"] = {"keys": [{"name": "fuzz", "hash": hash_key(CLIENT_KEY)}]}
    server = start_gateway(config, tmp)
    yield server
    server.stop()


def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Half the generated generation bodies name the served model, so that they reach an
    engine instead of stopping at 404. An empty name is left alone: it is what a negative
    example made invalid (``minLength``), and must stay so."""
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        return st.sampled_from([{**body, "model": "fake"}, body])
    return st.just(body)


@pytest.fixture(scope="module")
def api_schema(gateway: Server) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    schema.hook(flatmap_body)
    # A body made invalid may also be made too large: 413 refuses it as well as 400 does.
    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"])
    return schema


def test_published_document_is_valid_openapi(gateway: Server) -> None:
    document = httpx.get(gateway.url + "/openapi.json").json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert sorted(document["paths"]) == [
        "/admin/adapters", "/admin/adapters/{name}", "/admin/keys", "/admin/keys/{name}",
        "/admin/reload", "/admin/status", "/admin/tools/{name}/batch", "/debug/route",
        "/detokenize", "/health", "/metrics", "/openapi.json", "/ready", "/tokenize",
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
        "/v1/models/{model}", "/v1/responses", "/v1/tools", "/v1/tools/{name}"]
    chat = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["maxItems"] == BOUNDS["max_messages"]  # the instance's bounds


def _model_route(path: str) -> bool:
    """A route for API keys: /v1 and vLLM's tokenizer routes."""
    return path.startswith(("/v1", "/tokenize", "/detokenize"))


def _credentials(path: str) -> dict[str, str]:
    if path.startswith(("/admin", "/debug")):
        return {"authorization": f"Bearer {ADMIN_KEY}"}
    if _model_route(path):
        return {"authorization": f"Bearer {CLIENT_KEY}"}  # ignored without auth:
    return {}


def _ambiguous(value: Any) -> bool:
    """Whether a body holds numbers JSON Schema calls integers that the gateway's strict
    models refuse: 3.0 (an integer to JSON Schema, a float to the gateway) or one beyond
    64 bits. Such bodies may get a 400 although generated as valid."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) >= 2**63
    if isinstance(value, dict):
        return any(_ambiguous(v) for v in value.values())
    if isinstance(value, list):
        return any(_ambiguous(v) for v in value)
    return False


def _fuzz(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode,
          statuses: Counter[str]) -> None:
    """Bounded examples of one operation in one mode; counts each answer's status."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        # The timeout turns a hang into a failed example instead of a stalled run.
        response = case.call_and_validate(headers=_credentials(operation.path),
                                          checks=CHECKS, timeout=15)
        statuses[f"{operation.label} {mode.value} {response.status_code}"] += 1
        if mode == schemathesis.GenerationMode.POSITIVE and response.status_code == 400 \
                and _model_route(operation.path) and not _ambiguous(case.body):
            raise AssertionError(f"a body the document allows was refused: "
                                 f"{response.text[:300]}\nbody: {case.body!r:.500}")

    fuzz()


def test_fuzz(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, positive and negative examples. Failures are collected across
    operations (one minimal example each), so that one run reports them all."""
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an unreadable one fails here
        for mode in (schemathesis.GenerationMode.POSITIVE,
                     schemathesis.GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, statuses)
            except Unsatisfiable:  # nothing to make invalid: no parameters, no body
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # schemathesis' failure groups, hypothesis' errors
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The fuzzing reached the engines, not only the gateway's refusals.
    for label in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings",
                  "POST /v1/responses", "POST /tokenize", "POST /detokenize"):
        assert statuses[f"{label} positive 200"] > 0, statuses


def test_in_flight_gauges_back_at_zero(gateway: Server) -> None:
    text = httpx.get(gateway.url + "/metrics").text
    gauges = [line for line in text.splitlines()
              if line.startswith("llmgw_replica_in_flight_requests{")]
    assert gauges and all(line.endswith(" 0.0") for line in gauges), gauges
