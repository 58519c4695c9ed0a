"""Request ids: unique within a process and across processes (forked ones included)."""

from __future__ import annotations

import os
import re

from llmgw.api.request_ids import new_request_id


def test_ids_are_24_hex_characters_and_never_repeat_in_a_process() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent
    assert {i[:16] for i in child} != {i[:16] for i in parent}
