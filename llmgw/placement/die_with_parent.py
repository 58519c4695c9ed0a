"""``python -m llmgw.placement.die_with_parent -- PROGRAM ARGS...``: run PROGRAM so that
the kernel kills it (SIGKILL) when the process that started it dies, whatever the cause.

The launcher starts every engine through this instead of setting PR_SET_PDEATHSIG in a
``preexec_fn``: a ``preexec_fn`` runs between fork and exec in a copy of a process that
has threads (the gateway's executor and tokenizer pools), where a lock another thread
held at the fork stays locked forever; an engine started at run time (autoscaling,
rollouts) then hung before its first line of output. Here the setting is made by a fresh,
single-threaded process, then kept across exec. Imports only the standard library: it
costs a few tens of milliseconds per engine start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: python -m llmgw.placement.die_with_parent -- PROGRAM [ARGS...]",
              file=sys.stderr)
        return 2
    parent = os.getppid()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the setting took: do not start
        return 1
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as exc:  # in the engine's log, where the launcher reads its failure
        print(f"cannot run {argv[1]}: {exc.strerror or exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
