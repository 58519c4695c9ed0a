"""py-spy around a running process, and a text summary of where its CPU went.

The benchmark attaches py-spy by pid twice in a row. For the flame graph SVG it pauses the
process at each sample and reads native frames too (``--native``): whole coroutine stacks,
and CPython's cyclic garbage collector as its own frame; but pausing over-weights time
spent in syscalls. For the collapsed ("raw") stacks that :func:`summarize` reads it runs
``--nonblocking``: no such bias on the leaf (self) time, some torn stacks, and GC time
charged to whichever function allocated (bench/gc_probe.py measures the GC exactly).
py-spy leaves idle threads out, so percentages are shares of the samples in which the
process was running, i.e. of its CPU time.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Frames of the event loop itself. As a leaf: time in uvloop's C code and its socket
# syscalls. Inside a stack: the entry path, cut off before counting inclusive time.
_LOOP_FRAMES = ("Runner.run ", "BaseEventLoop.run_forever ", "run_until_complete ",
                "BaseEventLoop._run_once ")
LOOP_LABEL = "[event loop C code: uvloop, httptools, socket syscalls]"
GC_LABEL = "[cyclic garbage collector (gc_collect_main)]"
_GC_FRAMES = ("gc_collect", "collect_with_callback", "_PyObject_GC_Link")


def pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """``py-spy record --pid`` until :meth:`stop` (SIGINT makes it write its file)."""

    def __init__(self, exe: str, pid: int, out: Path, fmt: str, rate: int,
                 blocking: bool) -> None:
        self.out = out
        # Blocking: whole stacks, native frames (the GC shows); --nonblocking: no stop bias.
        mode = ["--native"] if blocking else ["--nonblocking"]
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--function",
                "--format", fmt, "-o", str(out), *mode]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def stop(self) -> str:
        """Stop sampling; returns py-spy's last words (empty when it is fine)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate(timeout=5)
        ok = self._proc.returncode == 0 and self.out.exists()
        return "" if ok else err.decode(errors="replace").strip()[-300:]


@dataclass
class Profile:
    samples: int
    self_top: list[tuple[str, float]]  # (frame, % of samples where it is the leaf)
    inclusive_top: list[tuple[str, float]]  # (frame, % of samples it is on the stack)
    packages: list[tuple[str, float]]  # (top-level module, % of self samples)
    callers: dict[str, str]  # leaf frame -> its most frequent caller


def _frame_label(frame: str) -> str:
    return LOOP_LABEL if frame.startswith(_LOOP_FRAMES) else frame


def _package(frame: str) -> str:
    if frame == LOOP_LABEL:
        return "event loop (C)"
    if frame == GC_LABEL:
        return "gc (CPython)"
    where = frame.rsplit(" (", 1)[-1].rstrip(")")
    return where.split("/", 1)[0].split(":", 1)[0].removesuffix(".py")


def _below_loop(frames: list[str]) -> list[str]:
    """The frames under the event loop (the request's own work), or all of them."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].startswith(_LOOP_FRAMES):
            return frames[index + 1:]
    return frames


def _caller(frames: list[str]) -> str | None:
    """The nearest caller of the leaf that is not a frozen stdlib helper (os.environ...)."""
    for frame in reversed(frames[:-1]):
        if "(<frozen " not in frame:
            return frame
    return None


def _stacks(raw: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks: ``a;b;c count`` per line, root first."""
    out = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            out.append((_python_view(stack.split(";")), int(count_text)))
    return out


def _python_view(frames: list[str]) -> list[str]:
    """Python frames only (native ones are charged to the Python frame that called
    them), with a synthetic leaf when the garbage collector was running."""
    python = [f for f in frames if ".py:" in f or "(<frozen " in f]
    if any(f.startswith(_GC_FRAMES) for f in frames):
        python.append(GC_LABEL)
    return python or frames


def summarize(raw: Path, top: int = 15) -> Profile:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    stacks = _stacks(raw)
    total = sum(count for _, count in stacks)
    for frames, count in stacks:
        label = _frame_label(frames[-1])
        leaf[label] += count
        caller = _caller(frames)
        if caller is not None and label not in (LOOP_LABEL, GC_LABEL):
            callers.setdefault(label, Counter())[caller] += count
        for frame in set(_below_loop(frames)):
            inclusive[frame] += count
    if not total:
        return Profile(0, [], [], [], {})
    packages: Counter[str] = Counter()
    for frame, count in leaf.items():
        packages[_package(frame)] += count

    def pct(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in counter.most_common(limit)]

    self_top = pct(leaf, top)
    first_callers = {name: callers[name].most_common(1)[0][0]
                     for name, _ in self_top if name in callers}
    return Profile(total, self_top, pct(inclusive, top), pct(packages, 12), first_callers)


def render(profile: Profile) -> list[str]:
    lines = [f"{profile.samples} samples of the running process (idle excluded)", "",
             "self time by top-level module:"]
    lines += [f"  {p:6.1f}%  {name}" for name, p in profile.packages]
    lines += ["", "top functions by self time:"]
    for name, p in profile.self_top:
        lines.append(f"  {p:6.1f}%  {name}")
        if name in profile.callers:
            lines.append(f"           called from {profile.callers[name]}")
    lines += ["", "top functions by inclusive time, below the event loop (lower bounds: "
                  "nonblocking samples tear some stacks; the SVG has whole ones):"]
    lines += [f"  {p:6.1f}%  {name}" for name, p in profile.inclusive_top]
    return lines


def gc_lines(stats: dict[str, dict[str, float]], cpu_s: float) -> list[str]:
    """bench/gc_probe.py's counts, against the CPU the process spent meanwhile."""
    if not stats:
        return ["garbage collector: no numbers (bench/gc_probe.py did not answer)"]
    total = sum(entry["total_ms"] for entry in stats.values())
    share = f" = {100 * total / (cpu_s * 1000):.0f}% of it" if cpu_s else ""
    lines = [f"garbage collector in the phase without a profiler: {total:.0f} ms "
             f"of {cpu_s * 1000:.0f} ms llmgw CPU{share}"]
    lines += [f"  {gen}: {int(e['count'])} collections, {e['total_ms']:.1f} ms in all, "
              f"longest {e['max_ms']:.1f} ms" for gen, e in sorted(stats.items())]
    return lines
