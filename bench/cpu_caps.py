"""Giving each process a CPU of its own on a machine with too few: a CFS bandwidth cap
(its own cgroup, at most ``cpus`` CPUs of time per period), or pinning to one CPU.

``bench/workers.py`` caps each gateway worker at e.g. 0.25 CPU, so that two workers on a
2-core machine behave as two workers with a (slow) core each, while the load generator and
the engine have the rest of the machine. Works with the cgroup v1 ``cpu`` controller
(``cpu.cfs_quota_us``) and cgroup v2 (``cpu.max``); needs root. Imports nothing from
``bench``: the scripts load it as ``cpu_caps``, the tests as ``bench.cpu_caps``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "llmgw-bench-"  # every cgroup made here is named so (the tests look for leftovers)


@dataclass(frozen=True)
class Controller:
    """A writable CPU bandwidth controller: its hierarchy's mount point and version."""

    root: Path
    version: int  # 1: cgroup v1 ``cpu`` controller; 2: unified hierarchy

    def describe(self) -> str:
        return f"cgroup v{self.version} at {self.root}"


def find_controller() -> Controller | None:
    """The CPU controller this process can make cgroups in (tried by making one), or None."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            found = Controller(mount, 1)
        elif fstype == "cgroup2" and _v2_has_cpu(mount):
            found = Controller(mount, 2)
        else:
            continue
        probe = mount / f"{PREFIX}probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        return found
    return None


def _v2_has_cpu(mount: Path) -> bool:
    """Whether new cgroups under ``mount`` get the cpu controller (enabling it if need be)."""
    try:
        if "cpu" not in (mount / "cgroup.controllers").read_text().split():
            return False
        if "cpu" not in (mount / "cgroup.subtree_control").read_text().split():
            (mount / "cgroup.subtree_control").write_text("+cpu")
    except OSError:
        return False
    return True


class CpuCaps:
    """Cgroups made by this process under one parent, each holding processes to at most
    ``cpus`` CPUs of time per ``period_us``. :meth:`close` moves the live processes back
    where they were and removes the cgroups."""

    def __init__(self, controller: Controller, cpus: float, period_us: int) -> None:
        self.controller, self.cpus, self.period_us = controller, cpus, period_us
        self.quota_us = max(1000, round(cpus * period_us))  # the kernel's minimum is 1 ms
        self.parent = controller.root / f"{PREFIX}{os.getpid()}"
        self.parent.mkdir()
        self.groups: list[Path] = []
        self._origins: dict[int, Path] = {}

    def describe(self) -> str:
        return (
            f"{self.cpus:g} CPU each (CFS quota {self.quota_us} us per {self.period_us} us "
            f"period, cgroup v{self.controller.version} under {self.parent})"
        )

    def cap(self, name: str, pid: int) -> Path:
        """A new cgroup ``name`` with this cap, holding ``pid`` (all its threads)."""
        group = self.parent / name
        group.mkdir()
        self.groups.append(group)
        if self.controller.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(self.period_us))
            (group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        else:
            (group / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
        self._origins[pid] = self._cgroup_of(pid)
        (group / "cgroup.procs").write_text(str(pid))
        return group

    def _cgroup_of(self, pid: int) -> Path:
        """Where ``pid`` is now in this hierarchy (to put it back there)."""
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            wanted = (
                "cpu" in controllers.split(",")
                if self.controller.version == 1
                else controllers == ""
            )
            if wanted:
                return self.controller.root / path.lstrip("/")
        return self.controller.root

    @staticmethod
    def throttling(group: Path) -> tuple[int, int]:
        """(CFS periods in which the group ran, periods in which its quota ran out)."""
        stat = dict(
            line.split()
            for line in (group / "cpu.stat").read_text().splitlines()
            if line.count(" ") == 1
        )
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))

    def close(self) -> None:
        """Processes back to their own cgroups, then every cgroup made here removed."""
        for group in self.groups:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    origin = self._origins.get(int(pid), self.controller.root)
                    with contextlib.suppress(OSError):  # it may have exited meanwhile
                        (origin / "cgroup.procs").write_text(pid)
        for group in [*self.groups, self.parent]:
            for _ in range(50):  # a process that just exited leaves its cgroup a moment later
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads it starts later inherit it):
    ``sched_setaffinity`` of a pid sets only its main thread."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)
