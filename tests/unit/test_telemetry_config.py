"""The telemetry settings as config: their bounds, what tracing adds to launched vLLM
engines' argv and environment, and what `llmgw check` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmgw.checks import check_telemetry
from llmgw.config import ConfigError, GatewayConfig, load_config
from llmgw.fleet.plan import plan_reload
from llmgw.placement.commands import engine_command, engine_env

COLLECTOR = "http://collector:4318/v1/traces"


def load(tmp_path: Path, config: dict[str, object]) -> GatewayConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config([path])


@pytest.mark.parametrize(("tracing", "message"), [
    ({"endpoint": "collector:4317"}, "must be an http(s) URL"),
    ({"endpoint": COLLECTOR, "sample_ratio": 1.5}, "less than or equal to 1"),
    ({"service_name": "x"}, "endpoint: Field required"),
], ids=["grpc-style address", "ratio above 1", "no endpoint"])
def test_tracing_settings_are_checked(tmp_path: Path, tracing: dict[str, object],
                                      message: str) -> None:
    with pytest.raises(ConfigError, match="telemetry.tracing") as caught:
        load(tmp_path, {"models": [{"name": "m", "engine": "openai", "url": "http://e:1"}],
                        "telemetry": {"tracing": tracing}})
    assert message in str(caught.value)


def test_telemetry_is_off_unless_configured(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"models": [{"name": "m", "engine": "openai", "url": "http://e:1"}]})
    assert cfg.telemetry.tracing is None
    assert cfg.server.access_log.enabled is False


def test_launched_vllm_engines_export_to_the_same_collector(tmp_path: Path) -> None:
    cfg = load(tmp_path, {
        "telemetry": {"tracing": {"endpoint": COLLECTOR}},
        "models": [
            {"name": "traced", "engine": "vllm", "model": "/models/m"},
            {"name": "own", "engine": "vllm", "model": "/models/m",
             "engine_args": {"otlp_traces_endpoint": "http://elsewhere:4318/v1/traces"},
             "launch": {"env": {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}}},
            {"name": "attached", "engine": "vllm", "url": "http://e:1"},
            {"name": "embedded", "engine": "transformers", "model": "demo"},
        ]})
    models = {m.name: m for m in cfg.models}
    argv = engine_command(models["traced"], "127.0.0.1", 8000, "/models/m")
    assert argv[argv.index("--otlp-traces-endpoint") + 1] == COLLECTOR
    env = engine_env(models["traced"])
    assert (env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"], env["OTEL_SERVICE_NAME"]) == (
        "http/protobuf", "vllm")
    # What the config sets itself wins.
    own = engine_command(models["own"], "127.0.0.1", 8000, "/models/m")
    assert own[own.index("--otlp-traces-endpoint") + 1] == "http://elsewhere:4318/v1/traces"
    assert engine_env(models["own"])["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "grpc"
    # Nothing to launch, or an engine without the flag: untouched.
    assert models["attached"].engine_args == {} and models["embedded"].engine_args == {}
    assert "--otlp-traces-endpoint" not in engine_command(models["embedded"], "h", 1, "demo")


def test_an_access_log_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    models = [{"name": "m", "engine": "openai", "url": "http://e:1"}]
    writable = tmp_path / "access.log"
    check_telemetry(load(tmp_path, {"models": models, "server": {
        "access_log": {"enabled": True, "path": str(writable)}}}))
    missing = tmp_path / "no-such-dir" / "access.log"
    with pytest.raises(ConfigError, match="server.access_log.path: .* cannot be written"):
        check_telemetry(load(tmp_path, {"models": models, "server": {
            "access_log": {"enabled": True, "path": str(missing)}}}))
    # A path is not read while the log is off.
    check_telemetry(load(tmp_path, {"models": models, "server": {
        "access_log": {"enabled": False, "path": str(missing)}}}))


@pytest.mark.parametrize("change", [
    {"server": {"access_log": {"enabled": True}}},
    {"telemetry": {"tracing": {"endpoint": COLLECTOR}}},
], ids=["access log", "tracing"])
def test_a_reload_that_changes_telemetry_is_refused(tmp_path: Path,
                                                    change: dict[str, object]) -> None:
    models = [{"name": "m", "engine": "openai", "url": "http://e:1"}]
    old = load(tmp_path, {"models": models})
    with pytest.raises(ConfigError, match="cannot change while the gateway runs"):
        plan_reload(old, load(tmp_path, {"models": models, **change}))
