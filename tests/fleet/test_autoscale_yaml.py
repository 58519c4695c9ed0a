"""`llmgw up configs/autoscale.yaml` exactly as its header says: `demo` starts with one
replica, `demo-burst` at zero, and `chat` splits traffic over both, sticky per session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fleet.conftest import ADMIN_KEY, chat, ready_ids, status
from tests.support import Server, llmgw_up

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway() -> Iterator[Server]:
    server = llmgw_up("configs/autoscale.yaml", timeout_s=180,
                      env={"LLMGW_ADMIN_KEY": ADMIN_KEY})
    yield server
    server.stop()


def test_starts_as_configured(gateway: Server) -> None:
    assert ready_ids(gateway, "demo") == ["demo-0"]
    models = status(gateway)["models"]
    assert models["demo-burst"]["pools"]["mixed"]["replicas"] == []
    assert models["demo"]["pools"]["mixed"]["autoscaler"]["desired"] == 1
    listed = {m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]}
    assert listed == {"demo", "demo-burst", "chat"}


def test_the_alias_keeps_each_session_on_one_model(gateway: Server) -> None:
    seen = {}
    for session in ("alice", "bob", "carol"):
        targets = set()
        for _ in range(2):
            answer = httpx.post(gateway.url + "/v1/chat/completions", json=chat("chat"),
                                headers={"x-session-id": session}, timeout=120)
            assert answer.status_code == 200, answer.text
            targets.add(answer.headers["x-llmgw-replica"].rsplit("-", 1)[0])
        assert len(targets) == 1
        seen[session] = targets.pop()
    assert set(seen.values()) <= {"demo", "demo-burst"}
