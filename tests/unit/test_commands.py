from __future__ import annotations

import sys

import pytest

from llmgw.config import ConfigError, GatewayConfig, ModelConfig
from llmgw.placement.commands import (
    check_launchable,
    engine_args_to_flags,
    engine_command,
    engine_env,
)
from llmgw.placement.local import log_file_name


def model(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "model": "/w", "replicas": 1, **fields})


def test_vllm_argv_from_typed_knobs_and_engine_args() -> None:
    m = model(engine="vllm", served_model_name="org/w", launch={
        "python": "/venv/bin/python", "tensor_parallel_size": 2, "max_model_len": 4096,
        "dtype": "bfloat16", "gpu_memory_utilization": 0.85, "enable_prefix_caching": False,
        "enable_lora": True, "max_loras": 4, "max_lora_rank": 16,
        "lora_modules": {"sql": "/a/sql"}},
        engine_args={"enforce_eager": True, "kv_events_config": {"enable": True},
                     "disable_log_stats": False})
    assert engine_command(m, "127.0.0.1", 9000, "/w") == [
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/w",
        "--served-model-name", "org/w", "--host", "127.0.0.1", "--port", "9000",
        "--tensor-parallel-size", "2", "--max-model-len", "4096", "--dtype", "bfloat16",
        "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching", "--enable-lora",
        "--max-loras", "4", "--max-lora-rank", "16", "--lora-modules", "sql=/a/sql",
        "--enforce-eager", "--kv-events-config", '{"enable": true}']


def test_sglang_uses_its_own_flag_names() -> None:
    m = model(engine="sglang", launch={"tensor_parallel_size": 4, "max_model_len": 8192,
                                       "gpu_memory_utilization": 0.8,
                                       "enable_prefix_caching": False})
    assert engine_command(m, "0.0.0.0", 30000, "/w") == [
        sys.executable, "-m", "sglang.launch_server", "--model-path", "/w",
        "--served-model-name", "m", "--host", "0.0.0.0", "--port", "30000",
        "--tp-size", "4", "--context-length", "8192", "--mem-fraction-static", "0.8",
        "--disable-radix-cache"]


def test_embedded_engine_refuses_gpu_knobs_before_launch() -> None:
    cfg = GatewayConfig.model_validate({"models": [
        {"name": "m", "model": "demo", "replicas": 1, "launch": {"tensor_parallel_size": 2}}]})
    with pytest.raises(ConfigError, match=r"models\[0\] \(m\): launch.tensor_parallel_size "
                                          r"is not supported by engine 'transformers'"):
        check_launchable(cfg)


def test_env_is_added_to_the_gateway_environment() -> None:
    env = engine_env(model(launch={"env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and "PATH" in env


def test_launch_settings_are_refused_for_attached_engines() -> None:
    with pytest.raises(ValueError, match="apply to launched engines only"):
        ModelConfig.model_validate({"name": "m", "url": "http://x", "launch": {"dtype": "f"}})


@pytest.mark.parametrize(
    ("args", "flags"),
    [({"a_b": 1}, ["--a-b", "1"]), ({"x": True, "y": False, "z": None}, ["--x"]),
     ({"l": [1, 2]}, ["--l", "1", "2"])],
    ids=["value", "booleans", "list"],
)
def test_engine_args_to_flags(args: dict[str, object], flags: list[str]) -> None:
    assert engine_args_to_flags(args) == flags


def test_log_file_names_keep_replicas_apart_on_disk() -> None:
    taken: set[str] = set()
    ids = ["Qwen/Qwen2.5-0.5B-Instruct-0", "a/b-0", "a_b-0", "../up-0", "é x\x00-0", "." * 3,
           "m" * 300]
    assert [log_file_name(i, taken) for i in ids] == [
        "Qwen_Qwen2.5-0.5B-Instruct-0.log", "a_b-0.log", "a_b-0.2.log", "_up-0.log",
        "__x_-0.log", "replica.log", "m" * 200 + ".log"]
