"""Disaggregated models in the config: validation, the replica order every part agrees
on, and the engine commands each pool launches with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmgw.build import check_config
from llmgw.config import ConfigError, DisaggConfig, GatewayConfig, ModelConfig, load_config
from llmgw.placement.commands import check_launchable, engine_command, launch_units
from llmgw.placement.local import attached_addresses

ROOT = Path(__file__).resolve().parents[2]
KV = {"kv_connector": "ExampleConnector", "kv_connector_extra_config":
      {"shared_storage_path": "/kv"}}


def pd_model(**fields: Any) -> ModelConfig:
    base: dict[str, Any] = {
        "name": "m", "engine": "vllm", "model": "/w",
        "disaggregation": {
            "prefill": {"replicas": 2, "kv_transfer": {**KV, "kv_role": "kv_producer"}},
            "decode": {"replicas": 1, "routing": "prefix-aware",
                       "kv_transfer": {**KV, "kv_role": "kv_consumer"}},
        },
    }
    return ModelConfig.model_validate({**base, **fields})


def test_a_disaggregated_model_is_one_model_with_two_pools() -> None:
    m = pd_model()
    assert (m.launched, m.replica_count, m.replica_roles, m.pd_protocol) == (
        True, 3, ["prefill", "prefill", "decode"], "vllm")
    assert [rid for rid, _ in launch_units(m)] == ["m-prefill-0", "m-prefill-1", "m-decode-0"]


def test_each_pool_launches_with_its_kv_transfer_config_and_engine_args() -> None:
    m = pd_model(engine_args={"enforce_eager": True}, launch={"env": {"A": "1"}},
                 disaggregation={
                     "prefill": {"replicas": 1, "kv_transfer": {"kv_connector": "NixlConnector",
                                                                "kv_role": "kv_both"},
                                 "engine_args": {"max_num_batched_tokens": 8192},
                                 "env": {"UCX_TLS": "tcp"}},
                     "decode": {"replicas": 1, "kv_transfer": {"kv_connector": "NixlConnector",
                                                               "kv_role": "kv_both"}}})
    (_, prefill), (_, decode) = launch_units(m)
    tail = ["--enforce-eager", "--kv-transfer-config",
            '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}']
    head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "/w",
            "--served-model-name", "m", "--host", "h", "--port", "1"]
    assert engine_command(prefill, "h", 1, "/w") == [
        *head, "--enforce-eager", "--max-num-batched-tokens", "8192", *tail[1:]]
    assert engine_command(decode, "h", 1, "/w") == [*head, *tail]
    assert (prefill.launch.env, decode.launch.env) == ({"A": "1", "UCX_TLS": "tcp"},
                                                       {"A": "1"})


def test_sglang_pools_get_their_disaggregation_mode_and_bootstrap_ports() -> None:
    m = ModelConfig.model_validate({
        "name": "q", "engine": "sglang", "model": "/w", "disaggregation": {
            "prefill": {"replicas": 2, "bootstrap_port": 9000},
            "decode": {"replicas": 1, "engine_args": {"disaggregation_transfer_backend":
                                                      "nixl"}}}})
    flags = [engine_command(unit, "h", 1, "/w")[11:] for _, unit in launch_units(m)]
    assert flags == [
        ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "9000"],
        ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "9001"],
        ["--disaggregation-transfer-backend", "nixl", "--disaggregation-mode", "decode"]]


def test_attached_pools_list_prefill_replicas_first() -> None:
    m = ModelConfig.model_validate({
        "name": "a", "engine": "openai", "disaggregation": {
            "protocol": "vllm", "prefill": {"url": "http://p:1/"},
            "decode": {"url": ["http://d:1", "http://d:2"]}}})
    assert [(a.id, a.url) for a in attached_addresses(m)] == [
        ("a-prefill-0", "http://p:1"), ("a-decode-0", "http://d:1"), ("a-decode-1", "http://d:2")]
    assert (m.launched, m.replica_roles) == (False, ["prefill", "decode", "decode"])


def test_attached_sglang_prefill_servers_may_each_have_their_bootstrap_port() -> None:
    def ports(bootstrap: object) -> list[int]:
        m = ModelConfig.model_validate({
            "name": "q", "engine": "sglang", "disaggregation": {
                "prefill": {"url": ["http://a:1", "http://b:1"], "bootstrap_port": bootstrap},
                "decode": {"url": "http://d:1"}}})
        assert m.disaggregation is not None
        return [m.disaggregation.prefill.bootstrap_port_of(i) for i in range(2)]
    assert (ports(None), ports(9100), ports([9100, 9200])) == (
        [8998, 8998], [9100, 9100], [9100, 9200])


POOLS = {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}


@pytest.mark.parametrize(("fields", "message"), [
    ({"replicas": 2, "disaggregation": POOLS}, "not 'replicas', 'autoscaling' or 'url'"),
    ({"engine": "transformers", "disaggregation": POOLS}, "has no prefill-decode protocol"),
    ({"disaggregation": {"prefill": {"replicas": 1}}}, "disaggregation.decode: Field required"),
    ({"disaggregation": {"prefill": {"replicas": 1, "url": "http://p"},
                         "decode": {"replicas": 1}}},
     "one of 'replicas' or 'autoscaling' (launch) or 'url'"),
    ({"disaggregation": {"prefill": {"url": "http://p"}, "decode": {"replicas": 1}}},
     "both launched ('replicas') or both attached"),
    ({"disaggregation": {"prefill": {"replicas": 1, "bootstrap_port": 8998},
                         "decode": {"replicas": 1}}}, "bootstrap_port is SGLang's"),
    ({"engine": "sglang", "disaggregation": {
        "prefill": {"replicas": 1, "kv_transfer": {"kv_connector": "X"}},
        "decode": {"replicas": 1}}}, "kv_transfer is vLLM's --kv-transfer-config"),
    ({"shadow": ["least-load"], "disaggregation": POOLS}, "not supported on a disaggregated"),
    ({"engine": "sglang", "disaggregation": {
        "prefill": {"replicas": 2, "bootstrap_port": [1, 2]}, "decode": {"replicas": 1}}},
     "one per 'url'"),
    ({"engine": "sglang", "disaggregation": {
        "prefill": {"replicas": 1, "bootstrap_port": 70000}, "decode": {"replicas": 1}}},
     "must be a port number"),
    ({"disaggregation": {**POOLS, "conditional": {"max_cached_share": 0}}},
     "max_cached_share: Input should be greater than 0"),
    ({"disaggregation": {**POOLS, "prefill_timeout_s": 0}}, "prefill_timeout_s"),
], ids=["model-replicas", "no-protocol", "one-pool", "pool-both", "mixed-modes",
        "bootstrap-on-vllm", "kv-transfer-on-sglang", "shadow", "port-list-launched",
        "bad-port", "cached-share-0", "timeout-0"])
def test_bad_disaggregation_configs_name_the_key(tmp: Path, fields: dict[str, Any],
                                                 message: str) -> None:
    path = tmp / "x.yaml"
    path.write_text(yaml.safe_dump({"models": [
        {"name": "m", "engine": "vllm", "model": "/w", **fields}]}))
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}: models[0]")


def test_unknown_pool_policy_is_named() -> None:
    cfg = GatewayConfig.model_validate({"models": [
        {"name": "m", "engine": "vllm", "model": "/w", "disaggregation": {
            "prefill": {"replicas": 1, "routing": "nope"}, "decode": {"replicas": 1}}}]})
    with pytest.raises(ConfigError, match=r"models\[0\]\.disaggregation\.prefill\.routing: "
                                          r"unknown policy 'nope'"):
        check_config(cfg)


@pytest.mark.parametrize("name", ["disagg.yaml", "disagg-gpu.yaml"])
def test_shipped_disaggregation_configs_validate(name: str) -> None:
    cfg = load_config([ROOT / "configs" / name])
    check_config(cfg)
    check_launchable(cfg)
    assert all(m.disaggregation is not None for m in cfg.models)


def test_the_readme_example_is_configs_disagg_yaml() -> None:
    readme = (ROOT / "README.md").read_text().split("## Prefill-decode disaggregation", 1)[1]
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = DisaggConfig.model_validate(yaml.safe_load(block)["disaggregation"])
    [model] = load_config([ROOT / "configs" / "disagg.yaml"]).models
    assert shown == model.disaggregation
