"""The fleet at a glance, through real processes: `llmgw up` reports each replica's start
(plain lines when its output is not a terminal, a live table when it is), and `llmgw
status URL` prints models, replicas, policies and recent error rates from the running
gateway's /admin/status."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import ROOT, Server, free_port, start_fake_engine, start_gateway

pytestmark = pytest.mark.e2e

KEY = "status-admin-key"
STARTS = re.compile(r"llmgw\.startup: (\S+): (starting|loading|ready in [0-9.]+s)$", re.M)


@pytest.fixture(scope="module")
def flaky() -> Iterator[Server]:
    engine = start_fake_engine("--fail-status", "500", name="flaky")
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def gateway(flaky: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "server": {"admin_key": KEY},
        "models": [
            {"name": "chat", "engine": "fake", "model": "fake", "replicas": 2,
             "routing": "session-aware", "shadow": ["least-load"]},
            {"name": "pd", "engine": "fake", "model": "fake", "disaggregation": {
                "protocol": "vllm", "prefill": {"replicas": 1}, "decode": {"replicas": 1}}},
            {"name": "flaky", "engine": "openai", "url": [flaky.url], "max_attempts": 1},
        ],
    }
    server = start_gateway(config, tmp_path_factory.mktemp("status"))
    yield server
    server.stop()


def llmgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "LLMGW_ADMIN_KEY"}
    return subprocess.run([sys.executable, "-m", "llmgw", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env={**environment, **(env or {})})


def test_up_reports_each_replica_starting_loading_and_ready(gateway: Server) -> None:
    seen: dict[str, list[str]] = {}
    for replica, phase in STARTS.findall(gateway.output()):
        seen.setdefault(replica, []).append(re.sub(r" in [0-9.]+s$", "", phase))
    assert seen == {replica: ["starting", "loading", "ready"]
                    for replica in ("chat-0", "chat-1", "pd-prefill-0", "pd-decode-0")}
    assert re.search(r"llmgw\.startup: 4 replica\(s\) ready in [0-9.]+s$", gateway.output(),
                     re.M)
    assert "\x1b[" not in gateway.output()  # not a terminal: no cursor movements


def test_up_reports_a_replica_that_fails_with_its_log(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": free_port()}, "models": [
        {"name": "bad", "engine": "fake", "model": "f", "engine_args": {"no_such_flag": 1}}]}))
    up = llmgw("up", str(config))
    assert up.returncode == 1
    assert re.search(r"llmgw\.startup: bad-0: failed after [0-9.]+s: engine bad-0 exited "
                     r"with code 2; last lines of ", up.stderr), up.stderr
    assert "unrecognized arguments: --no-such-flag 1" in up.stderr
    assert up.stderr.count("unrecognized arguments") == 1  # the tail is shown once
    assert "not serving: replica bad-0 did not start (its log is above)" in up.stderr


def test_up_on_a_terminal_shows_a_live_table(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": port}, "models": [
        {"name": "a", "engine": "fake", "model": "f", "replicas": 2}]}))
    leader, follower = pty.openpty()
    up = subprocess.Popen([sys.executable, "-m", "llmgw", "up", str(config)], cwd=ROOT,
                          stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                          env={**os.environ, "TERM": "xterm"}, start_new_session=True)
    os.close(follower)
    screen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Uvicorn running" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                screen += os.read(leader, 65536)
    finally:
        up.terminate()
        up.wait(30)
        os.close(leader)
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # redrawn in place
    assert re.search(r"2 replica\(s\) ready in [0-9.]+s", text), text
    assert re.search(r"a-0 +ready in [0-9.]+s", text) and re.search(r"a-1 +ready in", text)
    assert "llmgw.startup:" not in text  # the table, not the plain lines


def status(gateway: Server, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return llmgw("status", gateway.url, *args, env=env)


def test_status_prints_models_replicas_policies_and_error_rates(gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for model in ("chat", "chat", "pd", "flaky", "nothing-here"):
            client.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    shown = status(gateway, "--admin-key", KEY)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith(f"llmgw at {gateway.url}: 3 model(s); traffic over the last ")
    assert "chat  engine=fake  routing=session-aware  shadow=least-load" in text
    assert "pd  engine=fake  routing=prefill:least-load decode:least-load" in text
    assert re.search(r"replica +pool +state +health +in-flight +running +queue +kv +adapters",
                     text)
    for replica, pool in (("chat-0", "mixed"), ("chat-1", "mixed"), ("pd-prefill-0", "prefill"),
                          ("pd-decode-0", "decode"), ("flaky-0", "mixed")):
        assert re.search(rf"\n  {replica} +{pool} +ready +(up|down) +0 ", text), replica
    rates = re.search(r"flaky  .*\n  traffic: ([0-9.]+) req/s, 4xx [0-9.]+/s, 5xx ([0-9.]+)/s "
                      r"\(100\.0%\); errors: (\w+) ", text)
    assert rates is not None, text
    assert float(rates.group(1)) > 0 and rates.group(1) == rates.group(2)
    assert re.search(r"\nunknown models: [0-9.]+ req/s; errors: model_not_found ", text)


def test_status_reads_the_admin_key_from_the_environment_and_prints_json(
        gateway: Server) -> None:
    shown = status(gateway, "--json", env={"LLMGW_ADMIN_KEY": KEY})
    assert shown.returncode == 0, shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    chat = doc["models"]["chat"]
    assert chat["routing"] == {"policy": {"mixed": "session-aware"}, "shadow": ["least-load"]}
    replica = chat["pools"]["mixed"]["replicas"][0]
    assert set(replica["engine"]) == {"running", "waiting", "kv_usage"}
    assert replica["adapters"] == []
    assert set(doc["traffic"]) == {"window_s", "models"}


def test_status_without_the_right_key_says_so(gateway: Server) -> None:
    missing = status(gateway)
    assert missing.returncode == 2
    assert "needs the admin key: --admin-key or $LLMGW_ADMIN_KEY" in missing.stderr
    wrong = status(gateway, "--admin-key", "not-it")
    assert wrong.returncode == 1
    assert f"{gateway.url}/admin/status answered 401: missing or wrong admin key" in wrong.stderr
    nobody = llmgw("status", f"http://127.0.0.1:{free_port()}", "--admin-key", KEY)
    assert nobody.returncode == 1 and "cannot reach http://127.0.0.1:" in nobody.stderr
