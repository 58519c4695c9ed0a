"""Each pool of a disaggregated model scales on its own load: through a real gateway
launching the deterministic fake engine for both pools (vLLM's two-leg protocol; every
prompt here is short, so requests are served whole on the decode pool, which is the pool
the load lands on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet.conftest import ADMIN_KEY, Load, chat, failures, ready_ids, wait_for
from tests.support import Server, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
               "upscale_delay_s": 0.5, "look_back_period_s": 1, "downscale_delay_s": 600,
               "max_kv_usage": None, "max_engine_queue": None}
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "models": [{"name": "pd", "engine": "fake", "model": "fake", "disaggregation": {
            "protocol": "vllm",
            "prefill": {"replicas": 1},
            "decode": {"autoscaling": scaling, "engine_args": {"token_delay_ms": 20}},
            "conditional": {"min_prompt_tokens": 10_000}}}],
    }
    server = start_gateway(config, tmp_path_factory.mktemp("pd-autoscale"))
    yield server
    server.stop()


def test_the_decode_pool_scales_out_and_the_prefill_pool_stays(gateway: Server) -> None:
    assert ready_ids(gateway, "pd", "decode") == ["pd-decode-0"]
    assert ready_ids(gateway, "pd", "prefill") == ["pd-prefill-0"]
    load = Load(gateway.url, lambda n: chat("pd", 100, stream=True), workers=3,
                max_requests=300).start()
    try:
        scaled = wait_for(gateway, lambda s: len(ready_ids(gateway, "pd", "decode")) == 2,
                          60, "the decode pool to scale to 2")
    finally:
        outcomes = load.stop()
    pools = scaled["models"]["pd"]["pools"]
    assert pools["decode"]["autoscaler"]["desired"] == 2
    assert pools["prefill"]["target"] == 1 and "autoscaler" not in pools["prefill"]
    assert ready_ids(gateway, "pd", "prefill") == ["pd-prefill-0"]
    assert failures(outcomes) == []
