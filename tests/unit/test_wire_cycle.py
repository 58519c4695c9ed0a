"""What llmgw's own cycle (llmgw.api.wire.cycle) does when a model route misbehaves, and
when this uvicorn is not the one its protocol was written against. The transport is a
recorder (the cycle only writes, closes and pauses reading); everything a client sees
on a real connection is in tests/api/test_wire_protocol.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from llmgw.api.model_first import ModelRoutesFirst
from llmgw.api.wire import protocol
from llmgw.api.wire.cycle import WireCycle


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def _cycle(transport: _Transport, responses: list[str]) -> WireCycle:
    cycle = WireCycle(
        {"type": "http"},
        transport,
        FlowControl(transport),  # type: ignore[arg-type]
        b"server: test\r\n",
        keep_alive=True,
        expect_100_continue=False,
        on_response=lambda: responses.append("done"),
    )
    cycle.more_body = False
    cycle.message_event.set()
    return cycle


def test_a_route_that_raises_before_answering_gets_a_500_and_a_closed_connection() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    transport, responses = _Transport(), []
    asyncio.run(_cycle(transport, responses).run_asgi(broken))
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in head and b'"type":"server_error"' in body
    assert transport.closed and responses == ["done"]


def test_a_route_that_stops_mid_answer_has_its_connection_closed() -> None:
    async def half(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    transport, responses = _Transport(), []
    asyncio.run(_cycle(transport, responses).run_asgi(half))
    assert b"transfer-encoding: chunked" in transport.written
    assert transport.written.endswith(b"4\r\npart\r\n")  # never the last chunk
    assert transport.closed and responses == []


def test_a_json_answer_leaves_in_one_write() -> None:
    writes: list[bytes] = []

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    transport, responses = _Transport(), []
    transport.write = writes.append  # type: ignore[method-assign]
    asyncio.run(_cycle(transport, responses).run_asgi(answer))
    assert writes == [b"HTTP/1.1 200 OK\r\nserver: test\r\ncontent-length: 2\r\n\r\n{}"]
    assert not transport.closed and responses == ["done"]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_json_answer_extension_writes_what_the_two_messages_would(keep_alive: bool) -> None:
    headers = [(b"x-request-id", b"r-1")]

    async def by_messages(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"2"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async def by_extension(scope: Any, receive: Any, send: Any) -> None:
        await scope["extensions"]["llmgw.json_answer"](201, headers, b"{}")

    written = []
    for app in (by_messages, by_extension):
        writes: list[bytes] = []
        transport, responses = _Transport(), []
        transport.write = writes.append  # type: ignore[method-assign]
        cycle = _cycle(transport, responses)
        cycle.keep_alive = keep_alive
        asyncio.run(cycle.run_asgi(app))
        assert len(writes) == 1 and responses == ["done"]
        assert transport.closed is not keep_alive
        written.append(writes[0])
    assert written[0] == written[1]
    assert written[1].startswith(b"HTTP/1.1 201 Created\r\nserver: test\r\n")


def test_a_json_answer_to_a_client_that_left_writes_nothing() -> None:
    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await scope["extensions"]["llmgw.json_answer"](200, [], b"{}")

    transport, responses = _Transport(), []
    cycle = _cycle(transport, responses)
    cycle.disconnected = True
    asyncio.run(cycle.run_asgi(answer))
    assert transport.written == b"" and responses == []


def test_a_disconnect_reaches_the_subscribed_watch_once_and_only_before_the_end() -> None:
    transport, responses = _Transport(), []
    cycle = _cycle(transport, responses)
    cycle.task = task = object()  # type: ignore[assignment]  # the protocol sets it
    calls: list[tuple[str, object]] = []
    cycle.scope["extensions"]["llmgw.disconnect"](lambda owner: calls.append(("left", owner)))
    cycle.client_left()  # the protocol only marks disconnected when the answer is unfinished
    assert calls == []
    cycle.disconnected = True
    cycle.client_left()
    cycle.client_left()
    assert calls == [("left", task)]  # once, naming the task to cancel
    # Subscribing after the client left calls back at once.
    cycle.scope["extensions"]["llmgw.disconnect"](lambda owner: calls.append(("late", owner)))
    assert calls == [("left", task), ("late", task)]


def test_an_unfamiliar_uvicorn_protocol_falls_back_to_plain_uvicorn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = ModelRoutesFirst()
    assert isinstance(protocol.serving_protocol(app), type)
    monkeypatch.setattr(protocol, "_NEEDED", (*protocol._NEEDED, "_a_method_uvicorn_lacks"))
    with caplog.at_level(logging.WARNING, logger="llmgw.api"):
        assert protocol.serving_protocol(app) == "httptools"
    assert "_a_method_uvicorn_lacks" in caplog.text


def test_a_renamed_uvicorn_attribute_falls_back_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(protocol, "_ATTRIBUTES", (*protocol._ATTRIBUTES, "request_pipeline"))
    with caplog.at_level(logging.WARNING, logger="llmgw.api"):
        assert protocol.serving_protocol(ModelRoutesFirst()) == "httptools"
    assert "self.request_pipeline" in caplog.text


def test_a_body_that_came_with_its_head_is_taken_whole_and_receive_then_waits_for_the_end(
) -> None:
    async def run() -> tuple[bytes | None, bytes | None, dict[str, Any]]:
        transport, responses = _Transport(), []
        cycle = _cycle(transport, responses)
        whole = cycle.scope["extensions"]["llmgw.request_body"]
        cycle.body = bytearray(b'{"model": "m"}')
        first, again = whole(), whole()
        # Taken: a receive now waits for the next event (the end, or the client leaving).
        assert not cycle.message_event.is_set
        cycle.disconnected = True
        cycle.message_event.set()
        return first, again, await cycle.receive()

    assert asyncio.run(run()) == (b'{"model": "m"}', None, {"type": "http.disconnect"})


def test_a_body_still_coming_is_not_taken_whole() -> None:
    transport, responses = _Transport(), []
    cycle = _cycle(transport, responses)
    cycle.body, cycle.more_body = bytearray(b'{"model": '), True
    assert cycle.scope["extensions"]["llmgw.request_body"]() is None
    message = asyncio.run(cycle.receive())  # ASGI's way gets the part that came
    assert message == {"type": "http.request", "body": b'{"model": ', "more_body": True}
