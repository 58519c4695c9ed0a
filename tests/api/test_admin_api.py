"""The admin API's edges: any body gets an OpenAI-shaped answer (never a 500), bodies are
bounded by ``server.max_body_bytes``, a change that cannot be saved is not made, and a
blank admin key opens nothing. In process (a real Gateway, no engine behind it: nothing
here loads an adapter), plus one real gateway process for the HTTP server's side."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmgw.api import admin
from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from tests.support import Server, free_port, in_process_gateway, start_gateway

KEY = "admin-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
LIMIT = 4096


def gateway_config(tmp: Path, roots: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": KEY, "state_dir": str(tmp / "state"), "max_body_bytes": LIMIT},
        "models": [{"name": "remote", "engine": "vllm", "url": f"http://127.0.0.1:{free_port()}",
                    "lora": {"roots": [str(roots)]}}],
    }


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    (tmp_path / "roots" / "a1").mkdir(parents=True)
    return tmp_path / "roots"


@pytest.fixture
async def gateway(tmp_path: Path, roots: Path) -> AsyncIterator[Gateway]:
    config = GatewayConfig.model_validate(gateway_config(tmp_path, roots))
    built = in_process_gateway(config)
    yield built
    await built.close()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def good(**fields: str) -> dict[str, str]:
    return {"model": "remote", "name": "x", "source": "a1", **fields}


BODIES: list[tuple[str, bytes, int, str]] = [
    ("empty", b"", 400, "JSON"),
    ("null", b"null", 400, ""),
    ("list", b"[]", 400, ""),
    ("number", b"1", 400, ""),
    ("truncated", b"{", 400, "JSON"),
    ("not-utf8", b"\xff\xfe\xfd", 400, ""),
    ("deep", b"[" * 2000 + b"]" * 2000, 400, ""),
    ("deep-object", b'{"model":' * 400 + b"1" + b"}" * 400, 400, ""),
    ("wrong-type", b'{"model": 1, "name": "x", "source": "a1"}', 400, "model"),
    ("extra-field", b'{"model": "remote", "name": "x", "source": "a1", "y": 1}', 400, "y"),
    ("bad-name", b'{"model": "remote", "name": "../x", "source": "a1"}', 400, "name"),
    ("nul-source", b'{"model": "remote", "name": "x", "source": "a1\\u0000x"}', 400, "NUL"),
    ("surrogate-source", b'{"model": "remote", "name": "x", "source": "\\ud800"}', 400, ""),
    ("surrogate-key", b'{"model": "remote", "name": "x", "source": "a1", "\\ud800": 1}', 400,
     ""),
    ("surrogate-model", b'{"model": "\\udc80", "name": "x", "source": "a1"}', 400, "JSON"),
    ("long-source", b'{"model": "remote", "name": "x", "source": "' + b"a" * 3000 + b'"}', 400,
     "cannot be used"),
    ("nul-model", b'{"model": "re\\u0000mote", "name": "x", "source": "a1"}', 404, "LoRA"),
    ("too-big", b'{"model": "remote", "name": "x", "source": "' + b"a" * LIMIT + b'"}', 413,
     f"larger than {LIMIT} bytes"),
]


@pytest.mark.parametrize(("body", "status", "words"), [b[1:] for b in BODIES],
                         ids=[b[0] for b in BODIES])
async def test_any_register_body_gets_an_openai_error(client: httpx.AsyncClient, body: bytes,
                                                      status: int, words: str) -> None:
    error = assert_openai_error(await client.post("/admin/adapters", headers=AUTH,
                                                  content=body), status)
    assert words in error["message"]
    listing = await client.get("/admin/adapters", headers=AUTH)
    assert listing.json() == {"object": "list", "data": []}


async def test_a_streamed_body_is_cut_at_the_limit(client: httpx.AsyncClient) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 100 KiB announced by no content-length
            sent.append(1)
            yield b" " * 1024

    error = assert_openai_error(await client.post("/admin/adapters", headers=AUTH,
                                                  content=chunks()), 413)
    assert error["code"] == "payload_too_large" and len(sent) <= LIMIT // 1024 + 2


@pytest.mark.parametrize("name", ["nope", "%00", "a" * 3000, "..%2F..%2Fetc"])
async def test_deleting_what_does_not_exist_is_a_404(client: httpx.AsyncClient,
                                                     name: str) -> None:
    assert_openai_error(await client.delete(f"/admin/adapters/{name}", headers=AUTH), 404)


async def test_a_change_that_cannot_be_saved_is_refused_and_not_made(
        client: httpx.AsyncClient, tmp_path: Path) -> None:
    reply = await client.post("/admin/adapters", headers=AUTH, json=good(name="kept"))
    assert reply.status_code == 201, reply.text
    state = tmp_path / "state" / "adapters.json"
    state.unlink()
    state.mkdir()  # the state file can no longer be replaced
    for request in (client.post("/admin/adapters", headers=AUTH, json=good(name="new")),
                    client.delete("/admin/adapters/kept", headers=AUTH)):
        error = assert_openai_error(await request, 500)
        assert error["type"] == "server_error"
        assert error["message"].startswith("the change was NOT made: cannot write the adapter "
                                           f"state file {state}")
    listing = (await client.get("/admin/adapters", headers=AUTH)).json()["data"]
    assert [a["name"] for a in listing] == ["kept"]
    state.rmdir()
    assert (await client.delete("/admin/adapters/kept", headers=AUTH)).status_code == 200


@pytest.mark.parametrize("key", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Bearer    ", "bearer"])
async def test_a_blank_admin_key_opens_nothing(gateway: Gateway, key: str,
                                               header: str | None) -> None:
    app = create_app(gateway)
    app.state.admin_key = key  # as if it reached the app despite the config's own check
    headers = {"authorization": header} if header is not None else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        for response in (await c.get("/admin/adapters", headers=headers),
                         await c.post("/admin/adapters", headers=headers, json=good()),
                         await c.delete("/admin/adapters/x", headers=headers)):
            error = assert_openai_error(response, 401)
            assert "the admin API is disabled" in error["message"]


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic " + KEY, KEY, "Bearer x" + KEY])
async def test_an_empty_or_wrong_token_never_authenticates(client: httpx.AsyncClient,
                                                           header: str) -> None:
    error = assert_openai_error(await client.get("/admin/adapters",
                                                 headers={"authorization": header}), 401)
    assert error["code"] == "invalid_admin_key"


KEYS = [
    ("unset", None, None, None),
    ("empty", "", None, None),
    ("blank", " \t", None, None),
    ("set", "k", None, "k"),
    ("padded", " k ", None, "k"),
    ("env-wins", "k", "e", "e"),
    ("blank-env-is-unset", "k", "  ", "k"),
    ("blank-both", "", " ", None),
]


@pytest.mark.parametrize(("configured", "env", "expected"), [k[1:] for k in KEYS],
                         ids=[k[0] for k in KEYS])
def test_the_admin_key_in_effect(monkeypatch: pytest.MonkeyPatch, configured: str | None,
                                 env: str | None, expected: str | None) -> None:
    if env is None:
        monkeypatch.delenv(admin.ADMIN_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(admin.ADMIN_KEY_ENV, env)
    assert admin.admin_key(configured) == expected


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("admin")
    (tmp / "roots" / "a1").mkdir(parents=True)
    server = start_gateway(gateway_config(tmp, tmp / "roots"), tmp, ready_path="/health")
    yield server, tmp
    server.stop()


def test_through_the_http_server(served: tuple[Server, Path]) -> None:
    """uvicorn in front: an oversize body (declared or chunked) is a 413, a NUL byte in
    ``source`` a 400, an unsavable change a 500 that changes nothing."""
    server, tmp = served
    url = server.url + "/admin/adapters"
    with httpx.Client(timeout=30) as http:
        assert_openai_error(http.post(url, headers=AUTH, content=b"{" + b" " * LIMIT), 413)
        assert_openai_error(http.post(url, headers=AUTH,
                                      content=iter([b" " * 1024] * 64)), 413)
        error = assert_openai_error(http.post(url, headers=AUTH,
                                              json=good(source="a1\u0000x")), 400)
        assert error["param"] == "source"
        (tmp / "state").write_text("")  # the state directory cannot be created now
        try:
            assert_openai_error(http.post(url, headers=AUTH, json=good()), 500)
            assert http.get(url, headers=AUTH).json()["data"] == []
        finally:
            os.remove(tmp / "state")
        assert http.post(url, headers=AUTH, json=good()).status_code == 201
    assert "Traceback" not in server.output()
