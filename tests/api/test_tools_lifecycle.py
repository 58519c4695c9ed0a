"""Tool workers across the gateway's life: a class that cannot start stops `llmgw up` with
its error (nothing left running), and a planned shutdown lets a call in flight finish."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import yaml

from tests.support import ROOT, free_port, http_ok, start_gateway, wait_until

MODELS = [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]


def test_a_worker_that_cannot_start_stops_up_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"port": free_port()}, "models": MODELS,
        "tools": [{"name": "b", "import_path": "tests.fakes.tools:Broken", "replicas": 1,
                   "startup_timeout_s": 60}]}))
    up = subprocess.run([sys.executable, "-m", "llmgw", "up", str(path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 1
    assert "engine b-0 exited with code" in up.stderr
    assert "RuntimeError: cannot load the model weights" in up.stderr
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "llmgw.tools.worker" in " ".join(p.info["cmdline"] or [])
                and str(path) in " ".join(p.info["cmdline"] or [])]


def test_reload_keeps_tools_and_shutdown_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    config = {"server": {"drain_timeout_s": 30, "admin_key": "k"}, "models": MODELS,
              "tools": [{"name": "r", "import_path": "tests.fakes.tools:Recorder",
                         "replicas": 1, "init_args": {"gate": str(gate)}}]}
    gateway = start_gateway(config, tmp_path)
    # Tools are set up at start: a reload that changes them is refused, nothing changes.
    (file,) = tmp_path.glob("gateway-*.yaml")
    changed = yaml.safe_load(file.read_text())
    changed["tools"][0]["replicas"] = 2
    file.write_text(yaml.safe_dump(changed))
    refused = httpx.post(gateway.url + "/admin/reload", headers={"authorization": "Bearer k"})
    assert refused.status_code == 400
    assert "tools: changed; tools are set up at start" in refused.json()["error"]["message"]
    worker = [c for c in psutil.Process(gateway.proc.pid).children(recursive=True)
              if "llmgw.tools.worker" in " ".join(c.cmdline())]
    assert len(worker) == 1
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, gateway.url + "/v1/tools/r_slow",
                               json={"arguments": {"marker": "x"}}, timeout=60)
            wait_until(lambda: 'llmgw_tool_in_flight_calls{deployment="r"} 1.0'
                       in httpx.get(gateway.url + "/metrics").text, 30, "the call in flight")
            gateway.proc.send_signal(signal.SIGTERM)
            # Draining: no new connections; the call in flight still waits for the gate.
            wait_until(lambda: not http_ok(gateway.url + "/health"), 30, "the drain")
            assert not held.done()
            gate.touch()
            answer = held.result()
        assert answer.status_code == 200, answer.text
        assert gateway.proc.wait(60) == 0
        assert not worker[0].is_running() or worker[0].status() == psutil.STATUS_ZOMBIE
    finally:
        gateway.stop()
