"""Tools from ``tools:`` entries: schemas from type hints, descriptions from docstrings,
names checked, and every refusal naming its YAML key (what `llmgw check` prints)."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.config import ConfigError, GatewayConfig
from llmgw.tools.registry import check_tools
from llmgw.tools.schema import ArgumentsInvalid

MODELS = [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]


def config(*tools: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate({"models": MODELS, "tools": list(tools)})


def test_tools_of_the_example_class_as_openai_function_tools() -> None:
    specs = check_tools(config({"name": "weather",
                                "import_path": "llmgw.tools.examples:Weather"}))
    assert [s.openai() for s in specs] == [
        {"type": "function", "function": {
            "name": "weather", "description": "The weather today in a city, in one sentence.",
            "parameters": {"type": "object", "additionalProperties": False,
                           "properties": {"city": {"type": "string", "title": "City",
                                                   "description": "City name, e.g. Oslo"}},
                           "required": ["city"]}}},
        {"type": "function", "function": {
            "name": "weather_forecast",
            "description": "Daily temperatures in a city for the coming days.",
            "parameters": {"type": "object", "additionalProperties": False, "properties": {
                "city": {"type": "string", "title": "City"},
                "days": {"type": "integer", "title": "Days", "default": 3, "minimum": 1,
                         "maximum": 14, "description": "Days ahead"}},
                "required": ["city"]}}},
    ]


def test_docstring_first_paragraph_nested_models_and_batched_item_schemas() -> None:
    specs = {s.name: s for s in check_tools(config(
        {"name": "rec", "import_path": "tests.fakes.tools:Recorder"}))}
    assert list(specs) == ["rec_echo", "rec_add", "rec_fail", "rec_slow", "rec_square",
                           "rec_short", "rec_batch_sizes"]
    assert specs["rec_echo"].description == "Echo a text back."
    add = specs["rec_add"].parameters
    assert add["required"] == ["point"]
    assert add["$defs"]["Point"]["required"] == ["x"]
    # A batched method's tool takes one item: here one integer named as the list is.
    assert specs["rec_square"].parameters["properties"] == {
        "n": {"type": "integer", "title": "N"}}
    assert specs["rec_square"].batched is not None
    assert specs["rec_batch_sizes"].parameters["properties"] == {}


@pytest.mark.parametrize(("arguments", "param", "message"), [
    ({"text": 3}, "text", "Input should be a valid string"),
    ({}, "text", "Field required"),
    ({"text": "a", "extra": 1}, "extra", "Extra inputs are not permitted"),
    ('{"text": "a", "times": "x"}', "times", "Input should be a valid integer"),
    ("not json", None, "Invalid JSON"),
], ids=["wrong-type", "missing", "unknown", "json-text", "bad-json"])
def test_invalid_arguments_name_the_field(arguments: Any, param: str | None,
                                          message: str) -> None:
    (echo,) = [s for s in check_tools(config(
        {"name": "rec", "import_path": "tests.fakes.tools:Recorder"})) if s.name == "rec_echo"]
    with pytest.raises(ArgumentsInvalid) as caught:
        echo.validate(arguments)
    assert caught.value.param == param
    assert message in caught.value.message
    assert caught.value.message.startswith("tool 'rec_echo': ")


def test_valid_arguments_become_the_call() -> None:
    specs = {s.name: s for s in check_tools(config(
        {"name": "rec", "import_path": "tests.fakes.tools:Recorder"}))}
    assert specs["rec_echo"].call_input(specs["rec_echo"].validate('{"text": "a"}')) == (
        (), {"text": "a", "times": 1})
    assert specs["rec_square"].call_input(specs["rec_square"].validate({"n": "3"})) == (
        (3,), {})


@pytest.mark.parametrize(("entry", "expected"), [
    ({"import_path": "tests.fakes.nowhere:X"},
     "tools[0].import_path: cannot import 'tests.fakes.nowhere:X': ModuleNotFoundError"),
    ({"import_path": "tests.fakes.tools:Nowhere"},
     "tools[0].import_path: cannot import 'tests.fakes.tools:Nowhere': AttributeError"),
    ({"import_path": "tests.fakes.tools:NOT_A_CLASS"},
     "tools[0].import_path: cannot import 'tests.fakes.tools:NOT_A_CLASS': TypeError"),
    ({"import_path": "tests.fakes.tools:Untyped"},
     "tools[0].import_path: tests.fakes.tools:Untyped.run: parameter 'query' has no type hint"),
    ({"import_path": "tests.fakes.tools:VarArgs"},
     "tools[0].import_path: tests.fakes.tools:VarArgs.run: *queries / **queries: a tool's "
     "parameters must be named"),
    ({"import_path": "tests.fakes.tools:BadBatch"},
     "tools[0].import_path: tests.fakes.tools:BadBatch.run: a batched method takes exactly "
     "one parameter, a list[T]"),
    ({"import_path": "tests.fakes.tools:BadName"},
     "tools[0].import_path: tests.fakes.tools:BadName.run: tool name 'has space' must be"),
    ({"import_path": "tests.fakes.tools:NoTools"},
     "tools[0].import_path: tests.fakes.tools:NoTools has no method marked @llmgw.tool"),
    ({"import_path": "tests.fakes.tools:Recorder", "init_args": {"colour": "red"}},
     "tools[0].init_args: tests.fakes.tools:Recorder() got an unexpected keyword argument "
     "'colour'"),
    ({"import_path": "tests.fakes.tools:Recorder", "batch": {"echo": {}}},
     "tools[0].batch.echo: tests.fakes.tools:Recorder has no @llmgw.batch tool method 'echo'"),
], ids=["no-module", "no-class", "not-a-class", "untyped", "varargs", "batch-signature",
        "bad-name", "no-tools", "init-args", "batch-not-batched"])
def test_refusals_name_the_yaml_key(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_tools(config({"name": "t", **entry}))
    assert str(caught.value).startswith(expected), str(caught.value)


def test_names_collide_across_deployments() -> None:
    with pytest.raises(ConfigError, match=r"^tools\[1\]: tool name 'weather' is also a tool "
                                          r"of tools\[0\]$"):
        check_tools(config({"name": "weather", "import_path": "llmgw.tools.examples:Weather"},
                           {"name": "other", "import_path": "tests.fakes.tools:Clash"}))


@pytest.mark.parametrize(("tools", "expected"), [
    ([{"name": "a b", "import_path": "x:Y"}], "tools.0.name"),
    ([{"name": "a", "import_path": "x.Y"}], "tools.0.import_path"),
    ([{"name": "a", "import_path": "x:Y"}, {"name": "a", "import_path": "x:Z"}],
     "tool 'a' is declared twice"),
], ids=["name-pattern", "import-path-shape", "declared-twice"])
def test_config_shape(tools: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        GatewayConfig.model_validate({"models": MODELS, "tools": tools})
