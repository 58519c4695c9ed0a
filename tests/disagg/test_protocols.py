"""The bodies each engine's prefill-decode protocol gets, field by field."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from llmgw.disagg import sglang_protocol, vllm_protocol
from llmgw.errors import InvalidRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
        "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
        "min_tokens": 5, "top_k": 3}


def test_vllm_prefill_leg_asks_for_one_token_kept_for_remote_decode() -> None:
    assert orjson.loads(vllm_protocol.prefill_body({**CHAT, "max_completion_tokens": 50})) == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
        "max_completion_tokens": 1, "stream": False, "temperature": 0, "top_k": 3,
        "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                               "remote_engine_id": None, "remote_block_ids": None,
                               "remote_host": None, "remote_port": None}}


NIXL = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[1, 2]],
        "remote_engine_id": "e1", "remote_request_id": "r1", "remote_host": "10.0.0.1",
        "remote_port": 5600, "tp_size": 1, "remote_num_tokens": 1500}


def test_vllm_decode_leg_carries_every_prefill_param_unchanged() -> None:
    answer = orjson.dumps({"id": "x", "choices": [], "kv_transfer_params": NIXL})
    params = vllm_protocol.transfer_params(answer)
    assert params == NIXL
    assert orjson.loads(vllm_protocol.decode_body(CHAT, params)) == {
        **CHAT, "kv_transfer_params": NIXL}


@pytest.mark.parametrize("answer", [
    b'{"kv_transfer_params": null}', b'{"kv_transfer_params": {}}', b'{"choices": []}',
    b"not json", b"[1]"], ids=["null", "empty", "absent", "garbage", "not-an-object"])
def test_vllm_decode_leg_without_params_is_the_client_request(answer: bytes) -> None:
    params = vllm_protocol.transfer_params(answer)
    assert params is None
    client = {**CHAT, "kv_transfer_params": {"do_remote_prefill": True}}  # never forwarded
    assert orjson.loads(vllm_protocol.decode_body(client, params)) == CHAT


@pytest.mark.parametrize(("body", "ok"), [
    ({"messages": []}, True), ({"messages": [], "n": 1}, True), ({"messages": [], "n": 2}, False),
    ({"prompt": "a"}, True), ({"prompt": [1, 2, 3]}, True), ({"prompt": ["a"]}, True),
    ({"prompt": ["a", "b"]}, False), ({"prompt": [[1], [2]]}, False)],
    ids=["chat", "n1", "n2", "text", "token-ids", "one-text", "batch", "token-batch"])
def test_vllm_splits_one_prompt_with_one_output(body: dict[str, Any], ok: bool) -> None:
    assert vllm_protocol.splittable(body) is ok


def test_sglang_both_legs_get_bootstrap_host_port_and_room() -> None:
    body = orjson.loads(sglang_protocol.with_bootstrap(CHAT, "10.0.0.5", 8998,
                                                       random.Random(7)))
    room = random.Random(7).randint(0, 2**63 - 1)
    assert body == {**CHAT, "bootstrap_host": "10.0.0.5", "bootstrap_port": 8998,
                    "bootstrap_room": room}


@pytest.mark.parametrize(("body", "n"), [
    ({"messages": [], "n": 3}, 3), ({"prompt": ["a", "b"]}, 2), ({"messages": [], "n": 1}, None),
    ({"prompt": "a"}, None), ({"prompt": [1, 2]}, None)],
    ids=["chat-n3", "completion-batch", "chat-n1", "text", "token-ids"])
def test_sglang_batches_get_one_room_per_sequence(body: dict[str, Any], n: int | None) -> None:
    assert sglang_protocol.batch_size(body) == n
    out = orjson.loads(sglang_protocol.with_bootstrap(body, "h", 1, random.Random(0)))
    if n is None:
        assert isinstance(out["bootstrap_room"], int)
    else:
        rng = random.Random(0)
        assert (out["bootstrap_host"], out["bootstrap_port"], out["bootstrap_room"]) == (
            ["h"] * n, [1] * n, [rng.randint(0, 2**63 - 1) for _ in range(n)])


@pytest.mark.parametrize("build", [
    lambda body: vllm_protocol.prefill_body(body),
    lambda body: vllm_protocol.decode_body(body, {"remote": 1}),
    lambda body: sglang_protocol.with_bootstrap(body, "h", 1, random.Random(0)),
], ids=["vllm-prefill", "vllm-decode", "sglang"])
def test_a_body_too_deep_to_rewrite_is_the_clients_400(build: Any) -> None:
    """orjson reads 1024 levels but writes 254: a client body in between is refused with
    a 400 on both PD legs, as on the aggregated path (was a 500)."""
    deep = orjson.loads("[" * 300 + "]" * 300)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        build({"model": "m", "messages": [], "x": deep})
