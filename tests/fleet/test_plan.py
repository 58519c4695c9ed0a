"""Reload plans: a pure function of the running config and the new one, table-tested."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.config import ConfigError, GatewayConfig
from llmgw.fleet.plan import ModelPlan, plan_reload

BASE: dict[str, Any] = {
    "models": [
        {"name": "a", "engine": "transformers", "model": "demo", "replicas": 2,
         "engine_args": {"max_batch_size": 8}},
        {"name": "b", "engine": "openai", "url": ["http://e1", "http://e2"]},
    ],
}


def config(**changes: Any) -> GatewayConfig:
    models = [dict(m) for m in BASE["models"]]
    for name, fields in changes.get("models", {}).items():
        match = [m for m in models if m["name"] == name]
        if fields is None:
            models = [m for m in models if m["name"] != name]
        elif match:
            match[0].update(fields)
        else:
            models.append({"name": name, **fields})
    return GatewayConfig.model_validate(
        {**{k: v for k, v in changes.items() if k != "models"}, "models": models})


def models(**changes: Any) -> dict[str, Any]:
    return {"models": changes}


@pytest.mark.parametrize(("new", "expected"), [
    (config(), []),
    (config(**models(a={"engine_args": {"max_batch_size": 4}})),
     [ModelPlan("a", ("roll",), ("engine_args",))]),
    (config(**models(a={"launch": {"dtype": "float32"}})),
     [ModelPlan("a", ("roll",), ("launch",))]),
    (config(**models(a={"replicas": 3})), [ModelPlan("a", ("scale",), ("replicas",))]),
    (config(**models(a={"replicas": None, "autoscaling": {"max_replicas": 3}})),
     [ModelPlan("a", ("scale",), ("replicas", "autoscaling"))]),
    (config(**models(a={"routing": "session-aware", "timeouts": {"request_s": 9}})),
     [ModelPlan("a", ("update",), ("routing", "timeouts"))]),
    (config(**models(a={"served_model_name": "x"})),
     [ModelPlan("a", ("roll", "update"), ("served_model_name",))]),
    (config(**models(b={"url": ["http://e2", "http://e3"]})),
     [ModelPlan("b", ("attach",), ("url",))]),
    (config(**models(a={"placement": {"cpus": 4}})),
     [ModelPlan("a", ("roll",), ("placement",))]),
    (config(**models(b=None, c={"engine": "fake", "model": "fake", "replicas": 1})),
     [ModelPlan("b", ("remove",)), ModelPlan("c", ("add",))]),
    (config(**models(b={"url": None, "engine": "transformers", "model": "demo",
                        "replicas": 1})),
     [ModelPlan("b", ("remove", "add"), ("engine", "model", "replicas", "url"))]),
], ids=["nothing", "engine-args-roll", "launch-roll", "count-scale", "autoscaling-scale",
        "routing-in-place", "served-name-both", "urls-attach", "placement-roll", "remove-and-add",
        "attached-to-launched"])
def test_plan(new: GatewayConfig, expected: list[ModelPlan]) -> None:
    assert list(plan_reload(config(), new).models) == expected


def test_policies_and_aliases_changes_reach_the_models_that_use_them() -> None:
    old = config(policies={"p": {"scorers": [{"type": "least-load"}]}},
                 **models(a={"routing": "p"}))
    new = config(policies={"p": {"scorers": [{"type": "prefix-cache"}]}},
                 aliases=[{"name": "x", "targets": [{"model": "a", "weight": 1}]}],
                 **models(a={"routing": "p"}))
    plan = plan_reload(old, new)
    assert plan.models == (ModelPlan("a", ("update",), ("policies.p",)),)
    assert plan.changed == ("aliases", "policies")


@pytest.mark.parametrize("key", ["port", "host", "state_dir"])
def test_a_change_only_a_restart_applies_is_refused(key: str) -> None:
    value = {"port": 9999, "host": "0.0.0.0", "state_dir": "/elsewhere"}[key]
    with pytest.raises(ConfigError, match=f"server.{key}: cannot change while"):
        plan_reload(config(), config(server={key: value}))


def test_the_readme_example_is_configs_autoscale_yaml() -> None:
    import yaml

    from llmgw.config import load_config
    from tests.support import ROOT

    readme = (ROOT / "README.md").read_text().split("## Elastic fleet", 1)[1]
    shown = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    config = load_config([ROOT / "configs" / "autoscale.yaml"])
    assert GatewayConfig.model_validate(shown).models == config.models
    assert GatewayConfig.model_validate(shown).aliases == config.aliases


def test_the_placement_backend_is_chosen_at_start() -> None:
    with pytest.raises(ConfigError, match="placement: cannot change while"):
        plan_reload(config(), config(placement={"backend": "ray"}))
