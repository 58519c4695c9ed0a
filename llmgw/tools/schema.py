"""A tool's contract from its Python signature: the arguments model (pydantic), the JSON
Schema of its parameters, its description, and how its result becomes JSON.

A plain method's parameters (after ``self``) are the tool's parameters; each needs a type
hint, and ``Annotated[T, Field(description=...)]`` describes it. A batched method takes a
list: when the list's item type is a pydantic model, that model's fields are the tool's
parameters and each call's arguments are one item; any other item type is one parameter
named as the list parameter is. The description is the docstring's first paragraph.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from llmgw.tools.batching import BatchedMethod


class SignatureError(Exception):
    """A method whose signature cannot be a tool; the message says what to change."""


class ArgumentsInvalid(Exception):
    """Arguments a tool's schema refuses. ``param``: the first bad field's path."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class _Arguments(BaseModel):
    # Unknown arguments are refused: a model that misspells one should hear so.
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: a method of a deployment's class. Immutable; shared by every replica."""

    name: str
    deployment: str
    method: str
    description: str
    arguments: type[BaseModel]
    # Batched: the item is the arguments model itself (True) or its one field (False).
    batched: BatchedMethod | None
    item_is_model: bool
    returns: TypeAdapter[Any]

    @property
    def parameters(self) -> dict[str, Any]:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    def openai(self) -> dict[str, Any]:
        """The OpenAI function tool, as a chat completion's ``tools`` takes it."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": self.parameters}}

    def validate(self, arguments: object) -> BaseModel:
        """``arguments`` (a dict, or a JSON object as text, as models send them)
        validated; raises ArgumentsInvalid naming the field."""
        try:
            if isinstance(arguments, str | bytes):
                return self.arguments.model_validate_json(arguments or "{}")
            return self.arguments.model_validate(arguments)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])[:200] or None
            where = f"{param}: " if param else ""
            raise ArgumentsInvalid(f"tool {self.name!r}: {where}{first['msg']}", param) \
                from None

    def call_input(self, args: BaseModel) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What the method is called with: keyword arguments, or one batch item."""
        if self.batched is None:
            return (), {name: getattr(args, name) for name in type(args).model_fields}
        if self.item_is_model:
            return (args,), {}
        (only,) = type(args).model_fields
        return (getattr(args, only),), {}

    @property
    def output_schema(self) -> dict[str, Any]:
        """The result's JSON Schema as MCP's ``outputSchema`` (an object): the return
        type's own when it is an object, else ``{"result": <schema>}``."""
        schema = self.returns.json_schema()
        if schema.get("type") == "object":
            return schema
        return {"type": "object", "properties": {"result": schema}, "required": ["result"]}

    def structured(self, output: Any) -> dict[str, Any]:
        """An output as MCP's ``structuredContent``, shaped as ``output_schema``."""
        if self.returns.json_schema().get("type") == "object":
            return dict(output)
        return {"result": output}

    def dump(self, result: Any) -> Any:
        """The result as JSON-able data (pydantic models, dataclasses, tuples...)."""
        return self.returns.dump_python(result, mode="json")


def content_text(output: Any) -> str:
    """A result as a tool message's content: text as is, anything else as JSON."""
    return output if isinstance(output, str) else orjson.dumps(output).decode()


def describe(fn: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def build_spec(name: str, deployment: str, method: str, member: Any,
               description: str | None) -> ToolSpec:
    """Raises SignatureError for a signature that cannot be a tool."""
    batched = member if isinstance(member, BatchedMethod) else None
    fn = batched.fn if batched is not None else member
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an unresolvable annotation: any error of the user's module
        raise SignatureError(f"its type hints cannot be resolved: {exc}") from None
    params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SignatureError(f"*{param.name} / **{param.name}: a tool's parameters must "
                                 "be named (no *args, **kwargs)")
        if param.name not in hints:
            raise SignatureError(f"parameter {param.name!r} has no type hint (the schema "
                                 "comes from type hints)")
    returns = hints.get("return", Any)
    model_name = f"{name}_arguments"
    if batched is None:
        arguments = _model(model_name, [(p.name, hints[p.name], p.default) for p in params])
        return ToolSpec(name, deployment, method, description or describe(fn), arguments,
                        None, False, TypeAdapter(returns))
    item, item_return = _batch_types(params, hints, returns)
    item_is_model = isinstance(item, type) and issubclass(item, BaseModel)
    arguments = item if item_is_model else _model(
        model_name, [(params[0].name, item, inspect.Parameter.empty)])
    return ToolSpec(name, deployment, method, description or describe(fn), arguments,
                    batched, item_is_model, TypeAdapter(item_return))


def _model(name: str, fields: list[tuple[str, Any, Any]]) -> type[BaseModel]:
    definitions: dict[str, Any] = {
        field: (hint, ... if default is inspect.Parameter.empty else default)
        for field, hint, default in fields}
    try:
        return create_model(name, __base__=_Arguments, **definitions)
    except Exception as exc:  # pydantic cannot build a schema for a type the user chose
        raise SignatureError(f"its parameters cannot make a JSON Schema: {exc}") from None


def _batch_types(params: list[inspect.Parameter], hints: dict[str, Any],
                 returns: Any) -> tuple[Any, Any]:
    """A batched method's item type and per-item result type."""
    if len(params) != 1 or typing.get_origin(hints[params[0].name]) is not list:
        raise SignatureError("a batched method takes exactly one parameter, a list[T] "
                             "(one item per call)")
    (item,) = typing.get_args(hints[params[0].name]) or (Any,)
    item_return = Any
    if returns is not Any:
        if typing.get_origin(returns) is not list:
            raise SignatureError("a batched method returns a list[R] (one result per call)")
        (item_return,) = typing.get_args(returns) or (Any,)
    return item, item_return
