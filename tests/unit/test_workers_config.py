"""``server.workers``: what `llmgw check` accepts and refuses (each refusal names the
setting and why), and how "auto" and the default resolve. The workers themselves run in
tests/e2e/test_workers_yaml.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmgw.checks import validate
from llmgw.cli import main
from llmgw.config import ConfigError, GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
FAKE = {"name": "m", "engine": "fake", "model": "fake", "replicas": 1}
WEATHER = {"name": "weather", "import_path": "llmgw.tools.examples:Weather"}


def config(workers: object, **sections: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"server": {"workers": workers}, "models": [FAKE], **sections}
    )


@pytest.mark.parametrize(
    ("workers", "count"),
    [(1, 1), (3, 3), ("auto", os.cpu_count())],
    ids=["one", "three", "auto-is-the-cores"],
)
def test_workers_resolve_to_a_count_that_check_accepts(workers: object, count: int) -> None:
    cfg = config(workers)
    validate(cfg)
    assert cfg.server.worker_count == count


def test_one_worker_is_the_default() -> None:
    assert GatewayConfig.model_validate({"models": [FAKE]}).server.worker_count == 1


@pytest.mark.parametrize("workers", [0, -1, "many", 1.5, 257], ids=str)
def test_workers_out_of_range_or_not_a_count_are_refused(workers: object) -> None:
    with pytest.raises(ValueError, match="workers"):
        config(workers)


REFUSED = [
    (
        "ray",
        {"placement": {"backend": "ray"}},
        "server.workers: 2: needs placement.backend local; on Ray run one gateway per node "
        "instead (they share the fleet already, docs/ray.md)",
    ),
    (
        "tool-worker-processes",
        {"tools": [{**WEATHER, "replicas": 1}]},
        "tools[0].replicas: 1 worker process(es) would start once per gateway worker "
        "(server.workers: 2); set replicas: 0 (an instance in each worker) or workers: 1",
    ),
    (
        "scale-to-zero",
        {
            "models": [
                {
                    "name": "z",
                    "engine": "fake",
                    "model": "fake",
                    "autoscaling": {"min_replicas": 0, "max_replicas": 2},
                }
            ]
        },
        "models[0] (z): scaling to zero (min_replicas: 0) needs workers: 1 (server.workers: 2): "
        "the supervisor that starts replicas cannot see requests waiting in the workers",
    ),
]


@pytest.mark.parametrize(
    ("sections", "message"), [(s, m) for _, s, m in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_check_refuses_what_workers_cannot_share(sections: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        validate(config(2, **sections))
    assert str(refused.value) == message


def test_in_process_tools_are_served_by_every_worker() -> None:
    validate(config(2, tools=[{**WEATHER, "replicas": 0}]))


def test_llmgw_check_reports_the_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "configs" / "workers.yaml")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok  server: 2 workers on port 8000",
        "ok  chat: engine=fake replicas=2 launched routing=session-aware",
    ]
