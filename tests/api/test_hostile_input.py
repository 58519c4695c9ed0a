"""No client input raises past the API layer: every route of a real gateway, in front of
real fake engines, is fed generated hostile bodies and headers (deep nesting, wrong types
in every field the gateway reads, huge and odd strings, NUL, lone surrogates, non-objects,
raw bytes, oversized headers, lying content-lengths). Every answer is a success or an
OpenAI-shaped error below 500 (503 only as no_healthy_replica), and the request metrics
record exactly the statuses the clients got.

Bounded for CI: a fixed seed, a few hundred examples in all, no example database."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.api.generation import EXPLAIN_HEADER, MULTIPLEX_HEADER
from llmgw.api.header_limit import MAX_HEADER_BYTES
from llmgw.routing.session import SESSION_HEADERS
from tests.support import Server, start_fake_engine, start_gateway, wait_until

ADMIN_KEY = "hostile-test-admin-key"
MAX_BODY_BYTES = 16 * 1024
# One model per policy kind; "rr" is round-robin without LoRA.
MODELS = {"least": "least-load", "prefix": "prefix-aware", "session": "session-aware",
          "rr": "round-robin"}
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=10), derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
# The generation routes read the most: more examples there.
FUZZ_GENERATION = settings(FUZZ, max_examples=300)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    engines = [start_fake_engine() for _ in range(2)]
    tmp = tmp_path_factory.mktemp("hostile")
    config = {
        "server": {"admin_key": ADMIN_KEY, "max_body_bytes": MAX_BODY_BYTES,
                   "state_dir": str(tmp / "state")},
        "models": [{"name": name, "engine": "fake", "url": [e.url for e in engines],
                    "routing": policy} for name, policy in MODELS.items()],
    }
    try:
        server = start_gateway(config, Path(tmp))
        yield server
        server.stop()
    finally:
        for engine in engines:
            engine.stop()


# --- what clients send ------------------------------------------------------------------

# Nesting deeper than orjson writes (254) and than it reads (1024), spliced in as bytes.
DEEP = {"@@deep300@@": b"[" * 300 + b"]" * 300, "@@deep1100@@": b"[" * 1100 + b"]" * 1100}
ODD_TEXT = ["", "\x00", "a\x00b", "\u202e\ufeff", "\U0001f4a5" * 20, "x" * 6000,
            "x" * (MAX_BODY_BYTES + 1), "least", "least:none", ":"]
text = st.text(max_size=24) | st.sampled_from(ODD_TEXT)
deep = st.sampled_from(list(DEEP))
# Integers beyond 64 bits are in RAW_BODIES (orjson writes none).
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | text | deep)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


def _not_a_long_generation(value: object) -> bool:
    # A valid, large max_tokens is a real request, not a hostile one: the fake engine
    # would generate it.
    return not (type(value) is int and value > 8)


token_counts = st.integers(-2, 4) | json_values.filter(_not_a_long_generation)
not_text = json_values.filter(lambda value: not isinstance(value, str))
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]) | json_values},
    optional={"text": text | not_text}) | json_values
content = text | st.lists(part, max_size=3) | json_values
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "developer", "assistant"]) | json_values},
    optional={"content": content, "name": json_values}) | json_values
FIELDS = {
    "model": st.sampled_from([*MODELS, "nope", ""]) | json_values,
    "messages": st.lists(message, min_size=1, max_size=3) | json_values,
    "prompt": text | st.lists(st.integers(0, 9), max_size=3) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans() | json_values}) | json_values,
    "max_tokens": token_counts, "max_completion_tokens": token_counts,
    "temperature": json_values, "top_p": json_values, "n": st.just(1) | json_values,
    "user": text | json_values, "prompt_cache_key": text | json_values,
    "stop": text | st.lists(text, max_size=70) | json_values,
    "tools": deep | json_values, "extra": deep | json_values,
}


# The gateway forwards fields it does not read (messages, max_completion_tokens on
# completions): the engine behind it answers them, as a real one does, with a 400.
COMPLETION_FIELDS = FIELDS


@st.composite
def generation_bodies(draw: st.DrawFn, chat: bool) -> dict[str, Any]:
    """A valid request with a few fields made hostile (more would all but always be
    refused at the first one), maybe one dropped."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(list(MODELS))), "max_tokens": 2,
                            "stream": draw(st.booleans())}
    first = draw(st.just("hi") | text | st.lists(part, min_size=1, max_size=3))
    body.update({"messages": [{"role": "user", "content": first}]} if chat else {"prompt": "hi"})
    fields = FIELDS if chat else COMPLETION_FIELDS
    dropped = draw(st.sets(st.sampled_from(sorted(body)), max_size=1))
    for key in draw(st.sets(st.sampled_from(sorted(fields)), max_size=2)):
        body[key] = draw(fields[key])
    for key in dropped:
        body.pop(key, None)
    return body


def encode(body: object) -> bytes:
    raw = orjson.dumps(body)
    for mark, nested in DEEP.items():
        raw = raw.replace(orjson.dumps(mark), nested)
    return raw


RAW_BODIES = [
    b"", b"null", b"[]", b"1", b'"x"', b"{", b'{"model":"least"', b"\xef\xbb\xbf{}",
    b'{"model":"least","messages":[{"role":"user","content":"\\ud800"}]}',
    b'{"model":"least","prompt":"a\\u0000b","max_tokens":1}', b'{"model": NaN}',
    b'{"model":"least","prompt":"p","max_tokens":1e400}', b'{"model":"\xff\xfe"}',
    b'{"model":"least","model":"prefix","prompt":"p","max_tokens":1}',
    b'{"model":"least","prompt":"p","max_tokens":1' + b"0" * 400 + b"}",
]
raw_bodies = st.binary(max_size=48) | st.sampled_from(RAW_BODIES)

HEADER_NAMES = [*SESSION_HEADERS, "x-request-id", MULTIPLEX_HEADER, EXPLAIN_HEADER,
                "authorization", "content-type", "accept-encoding"]
# Visible latin-1 (what a header may carry), no leading or trailing space.
_VISIBLE = "".join(chr(c) for c in [*range(0x21, 0x7F), *range(0xA1, 0x100)])
header_values = (st.text(_VISIBLE, min_size=1, max_size=40)
                 | st.sampled_from(["x" * 8000, "x" * (MAX_HEADER_BYTES + 1), "least:none",
                                    f"Bearer {ADMIN_KEY}", "Bearer", "0", "-1", "gzip"])
                 ).map(lambda value: value.encode("latin-1"))
headers = st.dictionaries(st.sampled_from([name.encode() for name in HEADER_NAMES]),
                          header_values, max_size=3)


# --- what the gateway must answer -------------------------------------------------------

def check_answer(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert response.content.endswith(b"data: [DONE]\n\n")
            assert b'"server_error"' not in response.content, response.content[-500:]
        else:
            orjson.loads(response.content)
        return
    body = orjson.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert status < 500 or (status == 503 and error["code"] == "no_healthy_replica"), body


def generation_statuses(gateway: Server) -> Counter[str]:
    """llmgw_requests_total by status, over every model and endpoint."""
    counts: Counter[str] = Counter()
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith("llmgw_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def assert_counted(gateway: Server, before: Counter[str], seen: Counter[str]) -> None:
    # Recorded as the request ends, after its last byte: poll the gateway for it.
    wait_until(lambda: generation_statuses(gateway) - before == seen, 10,
               f"llmgw_requests_total to record {dict(seen)}")


# --- the routes -------------------------------------------------------------------------

def test_generation_routes_answer_every_input_cleanly(gateway: Server) -> None:
    seen: Counter[str] = Counter()
    before = generation_statuses(gateway)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        @FUZZ_GENERATION
        @given(chat=st.booleans(), data=st.data(), sent_headers=headers,
               raw=st.none() | st.none() | st.none() | raw_bodies)
        def run(chat: bool, data: st.DataObject, sent_headers: dict[bytes, bytes],
                raw: bytes | None) -> None:
            body = raw if raw is not None else encode(data.draw(generation_bodies(chat)))
            path = "/v1/chat/completions" if chat else "/v1/completions"
            response = client.post(path, content=body, headers=sent_headers)
            seen[str(response.status_code)] += 1
            check_answer(response)

        run()
    assert_counted(gateway, before, seen)
    assert seen["200"] > 10 and seen["400"] > 10  # it reached engines and refusals alike


SMALL_ROUTES = [("GET", "/v1/models"), ("GET", "/health"), ("GET", "/ready"),
                ("GET", "/metrics"), ("POST", "/debug/route"), ("GET", "/admin/adapters"),
                ("POST", "/admin/adapters"), ("DELETE", "/admin/adapters/{name}")]
admin_bodies = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(list(MODELS)) | json_values, "name": text | json_values,
    "source": st.sampled_from(["/tmp", "demo", "../x", "a\x00b"]) | text | json_values,
    "extra": json_values}) | json_values


def test_every_other_route_answers_every_input_cleanly(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        @FUZZ
        @given(route=st.sampled_from(SMALL_ROUTES), data=st.data(), sent_headers=headers,
               admin=st.booleans(), name=text)
        def run(route: tuple[str, str], data: st.DataObject, sent_headers: dict[bytes, bytes],
                admin: bool, name: str) -> None:
            method, path = route
            if admin and b"authorization" not in sent_headers:
                sent_headers = {**sent_headers, b"authorization": f"Bearer {ADMIN_KEY}".encode()}
            strategy = (generation_bodies(chat=data.draw(st.booleans())) if path == "/debug/route"
                        else admin_bodies)
            body = data.draw(st.none() | raw_bodies | strategy.map(encode))
            url = path.format(name=quote(name, safe=""))
            response = client.request(method, url, content=body, headers=sent_headers)
            oversized = len(b"".join(sent_headers.values())) > MAX_HEADER_BYTES
            if path in ("/health", "/ready", "/metrics", "/v1/models") and not oversized:
                assert response.status_code == 200, response.text
            if not (path == "/metrics" and response.status_code == 200):  # text, not JSON
                check_answer(response)

        run()


# Within reason: a content-length the HTTP parser itself refuses (not a number, beyond
# 64 bits) is answered by the server, before the gateway sees a request.
def _exchange(url: str, head: bytes, body: bytes) -> bytes:
    """Send one request as raw bytes and read its answer (the server closes)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("declared", "sent", "status"),
    [(5, b'{"model":"least","prompt":"hi","max_tokens":1}', "400"),
     (MAX_BODY_BYTES + 1, b'{"model":', "413")],
    ids=["shorter-than-the-body", "over-the-limit"],
)
def test_a_lying_content_length_is_answered_cleanly(gateway: Server, declared: int,
                                                    sent: bytes, status: str) -> None:
    before = generation_statuses(gateway)
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            + f"content-length: {declared}\r\n\r\n".encode())
    answer = _exchange(gateway.url, head, sent)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert_counted(gateway, before, Counter({status: 1}))


def test_a_client_that_leaves_mid_body_is_counted_as_a_disconnect(gateway: Server) -> None:
    before = generation_statuses(gateway)
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
                     + b'{"model":"least",')
    # The client saw nothing; 499 is what the gateway records.
    assert_counted(gateway, before, Counter({"499": 1}))
