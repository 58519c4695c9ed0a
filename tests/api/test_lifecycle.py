"""`llmgw up` as an operator runs it: launched engines, restarts, drain, no orphans, check."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.support import ROOT, Server, start_gateway, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def engine_children(gateway: Server) -> list[psutil.Process]:
    return [p for p in psutil.Process(gateway.proc.pid).children(recursive=True)
            if "llmgw.engines.fake" in " ".join(p.cmdline())]


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Server]:
    config = {
        "server": {"drain_timeout_s": 20},
        "health": {"interval_s": 0.2},
        "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 2,
                    "engine_args": {"token_delay_ms": 10}}],
    }
    gateway = start_gateway(config, tmp_path, timeout_s=60)
    yield gateway
    gateway.stop(signal.SIGKILL)


def test_launches_every_replica_as_a_child(launched: Server) -> None:
    assert len(engine_children(launched)) == 2
    for _ in range(4):
        r = httpx.post(launched.url + "/v1/chat/completions",
                       json={"model": "fake", "messages": MESSAGES, "max_tokens": 1})
        assert r.status_code == 200


def test_dead_replica_leaves_rotation_and_is_restarted(launched: Server) -> None:
    victim = engine_children(launched)[0]
    victim.kill()
    victim.wait(10)

    def metric(line: str) -> bool:
        return line in httpx.get(launched.url + "/metrics").text

    # Meanwhile every request still succeeds on the other replica.
    for _ in range(6):
        r = httpx.post(launched.url + "/v1/chat/completions",
                       json={"model": "fake", "messages": MESSAGES, "max_tokens": 1})
        assert r.status_code == 200
    wait_until(lambda: len(engine_children(launched)) == 2, 30, "the launcher to restart it")
    wait_until(lambda: metric('llmgw_replica_restarts_total{model="fake",replica="fake-0"} 1.0')
               or metric('llmgw_replica_restarts_total{model="fake",replica="fake-1"} 1.0'),
               30, "the restart to be counted")
    wait_until(lambda: all(metric(f'llmgw_replica_healthy{{model="fake",replica="fake-{i}"}} 1.0')
                           for i in range(2)), 30, "both replicas back in rotation")


def test_sigterm_drains_open_streams_then_stops_engines(launched: Server) -> None:
    children = engine_children(launched)
    result: dict[str, bytes] = {}
    started = threading.Event()

    def stream() -> None:
        body = {"model": "fake", "messages": MESSAGES, "max_tokens": 100, "stream": True}
        with httpx.stream("POST", launched.url + "/v1/chat/completions", json=body,
                          timeout=30) as r:
            chunks = []
            for chunk in r.iter_raw():
                started.set()
                chunks.append(chunk)
            result["body"] = b"".join(chunks)

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(10)
    os.killpg(launched.proc.pid, 0)  # still alive
    launched.proc.send_signal(signal.SIGTERM)
    reader.join(30)
    assert result["body"].endswith(b"data: [DONE]\n\n")
    assert result["body"].count(b'"content":"tok') == 100  # the open stream finished
    assert launched.proc.wait(30) == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_gateway_killed_hard_leaves_no_orphan_engines(launched: Server) -> None:
    children = engine_children(launched)
    launched.proc.kill()  # SIGKILL: no chance to clean up; the kernel must do it
    launched.proc.wait()
    for child in children:
        wait_until(lambda c=child: not c.is_running() or c.status() == psutil.STATUS_ZOMBIE,
                   10, f"engine {child.pid} to die with the gateway")


def test_up_serves_a_model_named_like_a_hub_id(tmp_path: Path) -> None:
    """`org/name` is what clients send; the replica keeps that id (metrics, headers) and
    only its engine's log file name is made safe for the file system."""
    config = {"models": [{"name": "org/name", "engine": "fake", "model": "fake",
                          "replicas": 1}]}
    gateway = start_gateway(config, tmp_path, timeout_s=60)
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model="org/name", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        assert reply.headers["x-llmgw-replica"] == "org/name-0"
        assert reply.parse().choices[0].message.content == "tok0 tok1"
        [engine] = engine_children(gateway)
        log = Path(os.readlink(f"/proc/{engine.pid}/fd/1"))
        assert log.name == "org_name-0.log"
        assert 'llmgw_replica_healthy{model="org/name",replica="org/name-0"} 1.0' in \
            httpx.get(gateway.url + "/metrics").text
    finally:
        gateway.stop()
    assert not log.parent.exists()  # the launcher's log folder goes with a clean stop


@pytest.mark.parametrize("drain_s", [0.5, 0])
def test_sigterm_cuts_streams_open_past_drain_timeout(tmp_path: Path, drain_s: float) -> None:
    """A drain shorter than a second is a drain, not "wait forever"; 0 does not wait."""
    config = {"server": {"drain_timeout_s": drain_s},
              "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 1,
                          "engine_args": {"token_delay_ms": 50}}]}
    gateway = start_gateway(config, tmp_path, timeout_s=60)
    body = {"model": "fake", "messages": MESSAGES, "max_tokens": 2000, "stream": True}
    received: list[bytes] = []
    try:
        # 2000 tokens at 50 ms: the stream would stay open for 100 s.
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                          timeout=120) as r:
            chunks = r.iter_raw()
            received.append(next(chunks))
            signalled = time.monotonic()
            gateway.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(httpx.HTTPError):
                received.extend(chunks)
        assert gateway.proc.wait(30) == 0
        took = time.monotonic() - signalled
    finally:
        gateway.stop(signal.SIGKILL)
    assert not b"".join(received).endswith(b"data: [DONE]\n\n")  # cut, not finished
    assert drain_s <= took < 15, f"exited {took:.1f}s after SIGTERM, drain {drain_s}s"


def test_idle_client_connections_close_after_keep_alive_s(tmp_path: Path) -> None:
    config = {"server": {"keep_alive_s": 0.5},
              "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 1}]}
    gateway = start_gateway(config, tmp_path, timeout_s=60)
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            # Head and body may come in two reads; a closed socket reads b"" and ends it.
            while not answer.endswith(b'{"status":"ok"}') and (chunk := sock.recv(65536)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
            opened = time.monotonic()
            assert sock.recv(65536) == b""  # closed by the gateway, not by this timeout
            idle = time.monotonic() - opened
    finally:
        gateway.stop()
    assert 0.4 <= idle < 4, idle  # the setting reached the server (uvicorn's default: 5 s)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmgw", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_check_validates_without_starting(tmp_path: Path) -> None:
    result = run_cli("check", "configs/local.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok  demo: engine=transformers replicas=2 launched routing=prefix-aware" in result.stdout


def test_bad_config_fails_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("models:\n  - {name: a, engine: fake, model: f, replicas: 1}\n"
                   "  - {name: b, engine: fake, model: f, replicas: 0}\n")
    for command in ("check", "up"):
        result = run_cli(command, str(bad))
        assert result.returncode == 2
        assert f"{bad}: models[1].replicas: Input should be greater than or equal to 1, got 0" \
            in result.stderr
        assert "Traceback" not in result.stderr


def test_engine_that_cannot_start_fails_up_with_its_log(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("models:\n  - {name: a, engine: fake, model: f, replicas: 1,"
                      " engine_args: {no_such_flag: 1}}\n")
    result = run_cli("up", str(config))
    assert result.returncode == 1
    assert "engine a-0 exited with code 2" in result.stderr
    assert "unrecognized arguments: --no-such-flag 1" in result.stderr


def test_demo_builds_the_model_offline_into_the_cache(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "llmgw", "demo"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "LLMGW_CACHE_DIR": str(tmp_path),
                                 "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == tmp_path
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {
        p.name for p in path.iterdir()}
