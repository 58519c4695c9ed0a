"""`llmgw up` refuses, before launching any engine, to start where it cannot listen (one
worker or several); with one worker it is one process, as it always was."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import ROOT, http_ok, start_gateway, wait_until


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_up_on_a_port_in_use_fails_before_launching_engines(tmp_path: Path,
                                                            workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(f"server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}\n"
                          "models: [{name: m, engine: fake, model: fake, replicas: 1}]\n")
        up = subprocess.run([sys.executable, "-m", "llmgw", "up", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert up.returncode == 1, up.stderr
    assert f"cannot listen on 127.0.0.1:{port}:" in up.stderr
    assert "starting m-0" not in up.stderr  # no engine was launched to be stopped again


def test_the_configs_log_level_reaches_llmgws_own_logs(tmp_path: Path) -> None:
    for level, quiet in (("info", False), ("warning", True)):
        gateway = start_gateway({"server": {"log_level": level}, "models": [
            {"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]}, tmp_path)
        gateway.stop()
        own_info = [line for line in gateway.output().splitlines()
                    if " INFO llmgw" in line]  # e.g. "INFO llmgw.placement: starting m-0"
        assert (own_info == []) is quiet, own_info[:3]


def test_one_worker_is_one_process_and_sends_no_worker_header(tmp_path: Path) -> None:
    gateway = start_gateway({"models": [
        {"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]}, tmp_path)
    try:
        answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        assert "x-llmgw-worker" not in answer.headers
        children = psutil.Process(gateway.proc.pid).children()
        assert [c.cmdline() for c in children if "llmgw.workers.worker" in c.cmdline()] == []
    finally:
        gateway.stop()


def test_the_port_is_held_while_engines_and_tool_workers_start(tmp_path: Path) -> None:
    """Bound from the check on, so that no engine or tool worker the gateway starts is
    given its port by the kernel; refused connections until it serves."""
    gate, log = tmp_path / "gate", tmp_path / "up.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "held.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "models: [{name: m, engine: fake, model: fake, replicas: 1}]\n"
        "tools: [{name: gated, import_path: 'tests.fakes.tools:Gated', replicas: 1}]\n")
    with log.open("wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "llmgw", "up", str(config)], cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "LLMGW_TEST_GATE": str(gate)})
    try:
        # Past the check once it launches the engine; the tool worker then waits at the gate.
        wait_until(lambda: "starting m-0" in log.read_text(errors="replace"), 60,
                   "the engine launched")
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        gate.touch()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60, "serving")
    finally:
        up.terminate()
        up.wait(60)
