"""The actor that holds one engine process on a Ray node (one per bundle of a replica),
or one tool worker: any ``spec.ProcessSpec``.

It runs inside a Ray worker, on the node its bundle was placed on, and is never on the
request path: it picks the process's ports on its node, starts it with the command the
local launcher would use (bound to the node's address, not loopback), answers where it
serves, and takes it down.

Why the engine stays in the worker's process group (no new session, unlike the local
launcher): Ray kills a worker's whole group when the worker exits or is killed, which
takes the engine *and its children* (vLLM's EngineCore) with it; a new session would let
those grandchildren escape. PR_SET_PDEATHSIG (the ``die_with_parent`` guard) covers a
worker that dies without Ray's cleanup. The engine's output goes to the worker's log
(Ray keeps and rotates it) and its last lines are kept for error messages.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from llmgw.placement.spec import Endpoint, ProcessSpec

_GUARD = [sys.executable, "-m", "llmgw.placement.die_with_parent", "--"]
_TAIL_LINES = 60
_HEALTH_TIMEOUT_S = 2.0


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EngineHost:
    """One engine process of a replica. ``labels`` say what it is (model, role, version,
    replica id) so a gateway started later can adopt it; ``rank`` > 0 joins rank 0 at
    ``master`` (host, port) and serves nothing itself."""

    def __init__(self, replica_id: str, spec: ProcessSpec, labels: dict[str, Any], rank: int,
                 master: tuple[str, int] | None) -> None:
        import ray

        self.replica_id, self.labels, self.rank = replica_id, labels, rank
        self.ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.port = _free_port(self.ip)
        self.kv_events_port = _free_port(self.ip) if spec.kv_events and rank == 0 else None
        self.health_path, self.bootstrap_port = spec.health_path, spec.bootstrap_port
        # Rank 0 is the master: its node's address and a port picked here.
        self.master = master or (self.ip, _free_port(self.ip) if len(spec.bundles) > 1 else 0)
        self.argv = spec.command.argv(
            Endpoint(self.ip, self.port, self.kv_events_port, rank, self.master))
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        print(f"llmgw: starting {replica_id} rank {rank}: {' '.join(self.argv)}", flush=True)
        # Spawned from the thread that runs __init__, which lives as long as the worker:
        # the kernel ties PR_SET_PDEATHSIG to the spawning thread, not the process.
        self.process = subprocess.Popen(
            [*_GUARD, *self.argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=spec.command.env())
        self.started_at = time.time()
        threading.Thread(target=self._relay_output, daemon=True,
                         name=f"engine-log-{replica_id}").start()

    def _relay_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self._tail.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def info(self) -> dict[str, Any]:
        return {**self.labels, "replica_id": self.replica_id, "rank": self.rank,
                "url": self.url, "node_id": self.node_id, "node_ip": self.ip,
                "pid": self.process.pid, "master": list(self.master),
                # The GPUs Ray gave this bundle (the engine sees only these).
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "kv_events": f"tcp://{self.ip}:{self.kv_events_port}"
                if self.kv_events_port is not None else None,
                "bootstrap_port": self.bootstrap_port,
                "exit_code": self.process.poll()}

    def ready(self, timeout_s: float) -> dict[str, Any]:
        """Wait until the engine answers /health (rank 0) or runs (other ranks); raise
        RuntimeError with the engine's last lines when it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(self._failure(f"exited with code {code}"))
            if self.rank > 0 or self._answers_health():
                return self.info()
            # Polling an engine that is still loading weights; nothing to wait on instead.
            time.sleep(0.25)
        raise RuntimeError(self._failure(f"not ready after {timeout_s:.0f}s"))

    def _answers_health(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path,
                                        timeout=_HEALTH_TIMEOUT_S) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _failure(self, what: str) -> str:
        return (f"engine {self.replica_id} (rank {self.rank}, node {self.ip}) {what}; "
                f"last lines:\n{self.tail()}")

    def tail(self) -> str:
        return "".join(self._tail) or "<no output>"

    def wait_exit(self) -> int:
        """Returns when the engine exits (its code); the launcher's supervisor waits here."""
        return self.process.wait()

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``. The engine's own children go with the
        worker's process group when the launcher kills this actor next."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
