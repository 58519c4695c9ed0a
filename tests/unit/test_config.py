from __future__ import annotations

from pathlib import Path

import pytest

from llmgw.build import check_config
from llmgw.cli import main
from llmgw.config import ConfigError, load_config
from llmgw.tools.registry import check_tools

ROOT = Path(__file__).resolve().parents[2]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_every_shipped_config_passes_llmgw_check(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`llmgw check configs/X.yaml` as the README runs it, from the repository root. A
    config naming an engine Python not installed here (the vLLM venv) is refused by name,
    as `up` could not start it."""
    monkeypatch.chdir(ROOT)
    cfg = load_config([path])
    pythons = sorted({m.launch.python for m in cfg.models if m.launched and m.launch.python})
    missing = [p for p in pythons if not (ROOT / p).exists()]
    rc = main(["check", str(path.relative_to(ROOT))])
    out = capsys.readouterr()
    if missing:
        assert (rc, out.out) == (2, ""), out.err
        assert f".launch.python: '{missing[0]}' is not an executable file" in out.err
    else:
        assert rc == 0, out.err
        assert out.out.splitlines() == [line for line in out.out.splitlines()
                                        if line.startswith("ok  ")]
        # The server's line when it runs several workers (configs/workers.yaml), one line
        # per model, then one per tool (configs/tools.yaml).
        server = 1 if cfg.server.worker_count > 1 else 0
        assert len(out.out.splitlines()) == server + len(cfg.models) + len(check_tools(cfg))


def test_configs_holds_the_runnable_examples() -> None:
    assert len(list((ROOT / "configs").glob("*.yaml"))) >= 8


def test_local_yaml_serves_demo_with_two_embedded_replicas() -> None:
    cfg = load_config([ROOT / "configs" / "local.yaml"])
    [model] = cfg.models
    assert (model.name, model.engine, model.model, model.replica_count, model.launched) == (
        "demo", "transformers", "demo", 2, True)


def test_later_files_override_keys_and_models_merge_by_name(tmp: Path) -> None:
    a = write(tmp, "a.yaml", """
server: {port: 8000, host: 0.0.0.0}
models:
  - {name: m1, engine: fake, model: x, replicas: 1}
  - {name: m2, engine: fake, model: y, replicas: 1}
""")
    b = write(tmp, "b.yaml", """
server: {port: 9000}
models:
  - {name: m2, replicas: 3}
  - {name: m3, url: http://127.0.0.1:1234/, engine: openai}
""")
    cfg = load_config([a, b])
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9000)
    assert [(m.name, m.model, m.replica_count) for m in cfg.models] == [
        ("m1", "x", 1), ("m2", "y", 3), ("m3", None, 1)]
    assert cfg.models[2].url == ["http://127.0.0.1:1234"]
    assert not cfg.models[2].launched


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  - {name: a, model: x, replicas: 1}\n  - {name: b, model: x, replicas: 0}\n",
         "bad.yaml: models[1].replicas: Input should be greater than or equal to 1, got 0"),
        ("models:\n  - {name: a, model: x, replicas: 1, colour: red}\n",
         "bad.yaml: models[0].colour: Extra inputs are not permitted, got 'red'"),
        ("models:\n  - {name: a, engine: transformers}\n",
         "bad.yaml: models[0]: a launched engine needs 'model'"),
        ("models:\n  - {name: a, url: 'ftp://x'}\n",
         "bad.yaml: models[0].url: must be an http(s) URL, got 'ftp://x'"),
        ("models:\n  - {name: a, url: 'http://x', replicas: 2}\n",
         "bad.yaml: models[0]: give either 'url' (attach) or 'replicas' / 'autoscaling' "
         "(launch), not both"),
        ("models: []\n", "bad.yaml: models: List should have at least 1 item"),
        ("server: {port: http}\nmodels:\n  - {name: a, model: x}\n",
         "bad.yaml: server.port: Input should be a valid integer"),
        ("models:\n  - {name: a, model: x}\n  - {name: a, model: y}\n",
         "model name 'a' is declared twice"),
        ("- 1\n- 2\n", "bad.yaml: the top level must be a mapping, got list"),
        ("models: [\n", "bad.yaml: not valid YAML"),
    ],
    ids=["replicas-zero", "unknown-key", "no-model", "bad-url", "url-and-replicas",
         "no-models", "wrong-type", "duplicate-name", "not-a-mapping", "bad-yaml"],
)
def test_bad_config_names_file_key_and_expectation(tmp: Path, text: str, expected: str) -> None:
    path = write(tmp, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert expected in str(info.value).replace(str(tmp) + "/", "")


def test_error_names_the_file_that_set_the_bad_key(tmp: Path) -> None:
    good = write(tmp, "good.yaml", "models:\n  - {name: a, model: x, replicas: 1}\n")
    bad = write(tmp, "override.yaml", "models:\n  - {name: a, replicas: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_config([good, bad])
    assert str(info.value).startswith(f"{bad}: models[0].replicas:")


def test_missing_file_is_a_config_error(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config([tmp / "nope.yaml"])


def test_unknown_routing_policy_is_refused_before_launch(tmp: Path) -> None:
    path = write(tmp, "r.yaml", "models:\n  - {name: a, model: x, routing: fastest}\n")
    with pytest.raises(ConfigError, match=r"models\[0\].routing: unknown policy 'fastest'; "
                                          r"known: least-load, precise-prefix-aware, prefix-aware, "
                                          r"random, round-robin, "
                                          r"session-aware"):
        check_config(load_config([path]))


def test_unknown_shadow_policy_is_refused_before_launch(tmp: Path) -> None:
    path = write(tmp, "s.yaml", "models:\n  - {name: a, model: x, shadow: [least-load, best]}\n")
    with pytest.raises(ConfigError, match=r"models\[0\].shadow\[1\]: unknown policy 'best'"):
        check_config(load_config([path]))
