"""`llmgw check` refuses, naming the YAML path, every config that `llmgw up` could not
start; `llmgw up` runs the same validation before it launches anything
(tests/api/test_cli_check.py runs both commands as processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmgw.cli import main

# (id, YAML, what the error says, files to write first). "{tmp}" is the test's
# directory; paths under /nonexistent never exist.
BAD_CONFIGS: list[tuple[str, str, str, dict[str, str]]] = [
    ("demo-adapter-named-otherwise", """
models:
  - {name: demo, model: demo, replicas: 1,
     lora: {adapters: [{name: my-adapter, source: demo}]}}
""", "models[0].lora.adapters[0]: adapter 'my-adapter': source 'demo' needs a name "
     "demo-lora-N with N in 0..63", {}),
    ("demo-adapter-out-of-range", """
models:
  - {name: demo, model: demo, replicas: 1,
     lora: {adapters: [{name: demo-lora-100000, source: demo}]}}
""", "models[0].lora.adapters[0]: adapter 'demo-lora-100000': source 'demo' needs a name "
     "demo-lora-N with N in 0..63", {}),
    ("demo-adapter-leading-zero", """
models:
  - {name: demo, model: demo, replicas: 1,
     lora: {adapters: [{name: demo-lora-01, source: demo}]}}
""", "models[0].lora.adapters[0]: adapter 'demo-lora-01': source 'demo' needs a name "
     "demo-lora-N with N in 0..63", {}),
    ("empty-admin-key", """
server: {admin_key: ""}
models: [{name: m, engine: fake, model: fake, replicas: 1}]
""", "server.admin_key: must not be empty or blank (leave it out to disable the admin API)", {}),
    ("blank-admin-key", """
server: {admin_key: "  "}
models: [{name: m, engine: fake, model: fake, replicas: 1}]
""", "server.admin_key: must not be empty or blank (leave it out to disable the admin API)", {}),
    ("missing-python", """
models:
  - {name: m, engine: fake, model: fake, replicas: 1,
     launch: {python: /nonexistent/bin/python}}
""", "models[0].launch.python: '/nonexistent/bin/python' is not an executable file", {}),
    ("missing-model-directory", """
models: [{name: m, model: /nonexistent/model, replicas: 1}]
""", "models[0].model: '/nonexistent/model': no such file or directory (and not a hub id)", {}),
    ("missing-tokenizer-directory", """
models:
  - {name: m, engine: vllm, model: demo, replicas: 1, routing: precise-prefix-aware,
     launch: {kv_events: true}, tokenizer: ~/nonexistent/tok}
""", "models[0].tokenizer: '~/nonexistent/tok': no such file or directory (and not a hub id)", {}),
    ("missing-adapter-directory", """
models:
  - {name: m, model: demo, replicas: 1,
     lora: {adapters: [{name: a, source: ./nonexistent/adapter}]}}
""", "models[0].lora.adapters[0].source: './nonexistent/adapter': no such file or directory "
     "(and not a hub id)", {}),
    ("state-dir-not-creatable", """
server: {state_dir: /dev/null/llmgw}
models: [{name: m, model: demo, replicas: 1, lora: {adapters: []}}]
""", "server.state_dir: /dev/null/llmgw cannot be created: /dev/null is not a directory", {}),
    ("state-file-wrong-shape", """
server: {state_dir: "{tmp}/state"}
models: [{name: m, model: demo, replicas: 1, lora: {adapters: []}}]
""", "server.state_dir: the adapter state file {tmp}/state/adapters.json: the top level "
     "must be an object", {"state/adapters.json": "[]"}),
    ("state-file-wrong-entries", """
server: {state_dir: "{tmp}/state"}
models: [{name: m, model: demo, replicas: 1, lora: {adapters: []}}]
""", "server.state_dir: the adapter state file {tmp}/state/adapters.json: registered.sql "
     "must be an object", {"state/adapters.json": '{"registered": {"sql": "s"}}'}),
]


def write_case(tmp: Path, text: str, files: dict[str, str]) -> Path:
    """The case's config (and the files it refers to) under ``tmp``."""
    for name, content in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)
    path = tmp / "bad.yaml"
    path.write_text(text.replace("{tmp}", str(tmp)))
    return path


@pytest.mark.parametrize(("text", "expected", "files"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_check_refuses_what_up_cannot_start(
    tmp: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str,
    files: dict[str, str],
) -> None:
    path = write_case(tmp, text, files)
    expected = expected.replace("{tmp}", str(tmp))
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no "ok" line
    assert out.err.startswith("llmgw: invalid config:\n"), out.err
    assert expected in out.err, out.err
