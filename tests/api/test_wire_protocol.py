"""The model routes on llmgw's own cycle (llmgw.api.wire) speak HTTP/1.1 as uvicorn does:
keep-alive beside uvicorn's own routes, pipelining, ``Expect: 100-continue``, chunked
request bodies, HTTP/1.0, ``connection: close``. Raw sockets against a real gateway
process, answers parsed by httptools' response parser."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httptools
import pytest

from tests.support import Server

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _request(
    body: dict[str, object] | bytes,
    *,
    path: str = "/v1/chat/completions",
    headers: tuple[tuple[str, str], ...] = (),
    version: str = "1.1",
    chunked: bool = False,
) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/{version}", "Host: test", "Content-Type: application/json"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(raw) // 2
        raw = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (raw[:half], raw[half:]))
        raw += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(raw)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


class _Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict[str, object]:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed


class _Client:
    """One raw connection; ``answers(n)`` parses the next n final answers (1xx answers
    go to ``informational``) with httptools' response parser."""

    def __init__(self, gateway: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        self.informational: list[int] = []
        self._done: list[_Answer] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self._parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self.informational.append(status)
        else:
            self._done.append(_Answer(status, self._headers, self._body))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answers(self, count: int) -> list[_Answer]:
        while len(self._done) < count:
            data = self.sock.recv(65536)
            assert data, "the gateway closed the connection"
            self._parser.feed_data(data)
        got, self._done = self._done[:count], self._done[count:]
        return got

    def closed_by_server(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(gateway: Server) -> Iterator[_Client]:
    client = _Client(gateway)
    yield client
    client.close()


def _completion(answer: _Answer) -> str:
    assert answer.status == 200, answer.body
    message = answer.json()["choices"][0]["message"]  # type: ignore[index]
    return str(message["content"])


def test_model_and_other_routes_share_one_keep_alive_connection(raw: _Client) -> None:
    for _ in range(3):
        raw.send(_request(CHAT))
        (answer,) = raw.answers(1)
        assert _completion(answer) == "tok0 tok1 tok2"
        assert answer.headers["content-length"] == str(len(answer.body))
        assert answer.headers["x-llmgw-replica"].startswith("fake-")
        assert "date" in answer.headers and "connection" not in answer.headers
        raw.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        (health,) = raw.answers(1)
        assert health.status == 200


def test_pipelined_requests_are_answered_in_order(raw: _Client) -> None:
    asks = [dict(CHAT, max_tokens=n) for n in (5, 1, 3)]
    raw.send(
        b"".join(_request(ask, headers=(("x-request-id", f"p{i}"),)) for i, ask in enumerate(asks))
    )
    answers = raw.answers(3)
    assert [a.headers["x-request-id"] for a in answers] == ["p0", "p1", "p2"]
    assert [len(_completion(a).split()) for a in answers] == [5, 1, 3]


def test_expect_100_continue_is_answered_before_the_body_is_sent(raw: _Client) -> None:
    request = _request(CHAT, headers=(("Expect", "100-continue"),))
    head, _, body = request.partition(b"\r\n\r\n")
    raw.send(head + b"\r\n\r\n")
    assert raw.sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
    raw.send(body)
    (answer,) = raw.answers(1)
    assert _completion(answer) == "tok0 tok1 tok2"


def test_a_chunked_request_body_is_read_whole(raw: _Client) -> None:
    raw.send(_request(CHAT, chunked=True))
    (answer,) = raw.answers(1)
    assert _completion(answer) == "tok0 tok1 tok2"


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(gateway: Server) -> None:
    for ask in (_request(CHAT, headers=(("Connection", "close"),)), _request(CHAT, version="1.0")):
        client = _Client(gateway)
        try:
            client.send(ask)
            (answer,) = client.answers(1)
            assert _completion(answer) == "tok0 tok1 tok2"
            assert answer.headers["connection"] == "close"
            assert client.closed_by_server()
        finally:
            client.close()


def test_a_streamed_answer_is_chunked_and_ends_with_done(raw: _Client) -> None:
    raw.send(_request(dict(CHAT, stream=True)))
    (answer,) = raw.answers(1)
    assert answer.status == 200
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.body.endswith(b"data: [DONE]\n\n")


def test_errors_on_the_wire_keep_the_connection(raw: _Client) -> None:
    raw.send(_request(b"{not json"))
    raw.send(_request(dict(CHAT, model="missing")))
    raw.send(_request(CHAT))
    bad, missing, good = raw.answers(3)
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert missing.status == 404 and missing.json()["error"]["param"] == "model"  # type: ignore[index]
    assert _completion(good) == "tok0 tok1 tok2"


def test_a_percent_encoded_or_query_path_reaches_the_same_route(raw: _Client) -> None:
    raw.send(_request(CHAT, path="/v1/chat%2Fcompletions"))
    raw.send(_request(CHAT, path="/v1/chat/completions?trace=1"))
    encoded, query = raw.answers(2)
    assert _completion(query) == "tok0 tok1 tok2"
    # uvicorn decodes %2F into the path, as every ASGI server does: the same route.
    assert _completion(encoded) == "tok0 tok1 tok2"


def test_a_body_sent_in_pieces_is_read_whole(raw: _Client) -> None:
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = _request(CHAT)
    for start in range(0, len(request), 17):
        raw.send(request[start : start + 17])
    (answer,) = raw.answers(1)
    assert _completion(answer) == "tok0 tok1 tok2"
