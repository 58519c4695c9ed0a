"""The gateway's OpenAPI 3.1 document, served at GET /openapi.json.

FastAPI only describes its own APIRoutes; every llmgw route is a plain Starlette route
(the generation routes raw ASGI apps), so the document is written here, one entry per
route that ``create_app`` mounts. Request bodies come from the pydantic models that
validate them (llmgw.protocol, the admin API's), tightened by the instance's
``server.request_bounds`` so that a client or a fuzzer reads the limits it will meet.
Responses are described as far as clients rely on them: the status codes each route
answers and OpenAI's error shape; success bodies list only their stable fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmgw.api.admin import RegisterAdapter
from llmgw.api.keys import CreateKey
from llmgw.api.tools import BatchBounds, CallTool
from llmgw.config import RequestBounds
from llmgw.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ResponsesRequest,
    TokenizeRequest,
)

Schema = dict[str, Any]

_ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}
_OBJECT: Schema = {"type": "object"}
_MODEL: Schema = {"type": "object", "required": ["id", "object"],
                  "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}
_LIST: Schema = {"type": "object", "required": ["object", "data"],
                 "properties": {"object": {"const": "list"}, "data": {"type": "array"}}}
_COMPLETION: Schema = {"type": "object", "required": ["id", "object", "choices"],
                       "properties": {"id": {"type": "string"},
                                      "object": {"enum": ["chat.completion", "text_completion"]},
                                      "choices": {"type": "array"}}}
_RESPONSE: Schema = {"type": "object", "required": ["id", "object", "output"],
                     "properties": {"id": {"type": "string"}, "object": {"const": "response"},
                                    "output": {"type": "array"}}}
_EMBEDDINGS: Schema = {"type": "object", "required": ["object", "data", "usage"],
                       "properties": {"object": {"const": "list"}, "data": {"type": "array"},
                                      "usage": {"type": "object"}}}
_TOKENS: Schema = {"type": "object", "required": ["count", "tokens"],
                   "properties": {"count": {"type": "integer"},
                                  "tokens": {"type": "array", "items": {"type": "integer"}}}}
_TEXT: Schema = {"type": "object", "required": ["prompt"],
                 "properties": {"prompt": {"type": "string"}}}
# What each kind of route may answer besides success. The generation routes also pass an
# engine's own 4xx through (UpstreamRejected), hence the 4XX range.
_GENERATION_ERRORS = ("400", "401", "404", "413", "429", "431", "4XX", "502", "503", "504")
_ADMIN_ERRORS = ("400", "401", "404", "409", "413", "431", "500")
_BEARER: list[Schema] = [{"bearer": []}]
# /v1 routes: no key needed without auth:, hence the empty alternative.
_CLIENT: list[Schema] = [{}, {"bearer": []}, {"apiKey": []}]
_TOOL_RESULT: Schema = {"type": "object", "required": ["object", "tool", "output", "content"],
                        "properties": {"object": {"const": "tool.result"},
                                       "tool": {"type": "string"}, "output": {},
                                       "content": {"type": "string"}}}
# A tool call: its arguments refused (400), an unknown tool (404), the tool raised (500),
# its worker went away (502), no healthy replica (503), past timeout_s (504).
_TOOL_ERRORS = ("400", "401", "404", "413", "431", "500", "502", "503", "504")


def openapi_schema(bounds: RequestBounds) -> Schema:
    """The whole document for an instance with these request bounds."""
    components = _request_schemas(bounds)
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmgw", "version": "1",
                 "description": "OpenAI-compatible LLM gateway. With `auth:` the /v1 routes "
                                "need an API key; /admin and /debug routes need the admin key."},
        "paths": _paths(),
        "components": {"schemas": {**components, "Error": _ERROR}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key (with auth:) or, on /admin and /debug, "
                                      "the admin key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"}}},
    }


def _request_schemas(bounds: RequestBounds) -> dict[str, Schema]:
    models: list[type[BaseModel]] = [ChatCompletionRequest, CompletionRequest,
                                     EmbeddingRequest, ResponsesRequest, TokenizeRequest,
                                     DetokenizeRequest, RegisterAdapter, CreateKey, CallTool,
                                     BatchBounds]
    _, defs = models_json_schema([(m, "validation") for m in models],
                                 ref_template="#/components/schemas/{model}")
    schemas: dict[str, Schema] = defs["$defs"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        properties = schemas[name]["properties"]
        _bound(properties["n"], "integer", "maximum", bounds.max_n)
        if bounds.max_tokens is not None:
            _bound(properties["max_tokens"], "integer", "maximum", bounds.max_tokens)
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["messages"]["maxItems"] = bounds.max_messages
    if bounds.max_tokens is not None:
        _bound(chat["max_completion_tokens"], "integer", "maximum", bounds.max_tokens)
    _bound(schemas["TokenizeRequest"]["properties"]["messages"], "array", "maxItems",
           bounds.max_messages)
    responses = schemas["ResponsesRequest"]["properties"]
    _bound(responses["input"], "array", "maxItems", bounds.max_messages)
    if bounds.max_tokens is not None:
        _bound(responses["max_output_tokens"], "integer", "maximum", bounds.max_tokens)
    for branch in schemas["EmbeddingRequest"]["properties"]["input"]["anyOf"]:
        # A batch of strings or of id lists; one list of ids is one input.
        if branch.get("type") == "array" and branch["items"].get("type") != "integer":
            branch["maxItems"] = bounds.max_inputs
    return schemas


def _bound(prop: Schema, kind: str, key: str, value: int) -> None:
    """Set ``key`` on the branch of type ``kind`` of a field (``int | None`` is an anyOf)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == kind:
            branch[key] = value


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _op(summary: str, ok: dict[str, Schema], errors: tuple[str, ...] = (),
        body: Schema | None = None, admin: bool = False, path_name: bool = False) -> Schema:
    responses: dict[str, Schema] = {code: {"description": "success", "content": content}
                                    for code, content in ok.items()}
    responses |= {code: {"description": "error", "content": _json(_ref("Error"))}
                  for code in errors}
    op: Schema = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if admin:
        op["security"] = _BEARER
    if path_name:
        op["parameters"] = [{"name": "name", "in": "path", "required": True,
                             "schema": {"type": "string"}}]
    return op


def _generation(summary: str, body: str, answer: Schema = _COMPLETION,
                streams: bool = True) -> Schema:
    """A model route (llmgw.protocol.ENDPOINTS). ``streams``: it answers ``stream: true``
    with server-sent events: each a chunk's JSON (Responses events also have an
    ``event:`` line), an error's ({"error": ...}) after the stream started, or [DONE]
    last (chat and completions)."""
    stream = {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}}
    op = _op(summary, {"200": {**_json(answer), **(stream if streams else {})}},
             _GENERATION_ERRORS, _ref(body))
    op["security"] = _CLIENT
    return op


def _paths() -> dict[str, Schema]:
    admin_list = {"200": _json(_LIST)}
    return {
        "/v1/chat/completions": {"post": _generation("Chat completion (streamed with "
                                                     "stream: true)", "ChatCompletionRequest")},
        "/v1/completions": {"post": _generation("Text completion", "CompletionRequest")},
        "/v1/embeddings": {"post": _generation("Embeddings of one input or a batch",
                                               "EmbeddingRequest", _EMBEDDINGS, False)},
        "/v1/responses": {"post": _generation(
            "Responses API (streamed with stream: true), relayed to engines that serve it",
            "ResponsesRequest", _RESPONSE)},
        "/tokenize": {"post": _generation("A prompt or chat messages to the model's token ids",
                                          "TokenizeRequest", _TOKENS, False)},
        "/detokenize": {"post": _generation("Token ids to text", "DetokenizeRequest", _TEXT,
                                            False)},
        "/v1/models": {"get": {**_op("Served models, adapters and aliases the caller may use",
                                     {"200": _json(_LIST)}, ("401", "431")),
                               "security": _CLIENT}},
        "/v1/models/{model}": {"get": {
            **_op("One model, adapter or alias the caller may use", {"200": _json(_MODEL)},
                  ("401", "404", "431")),
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "security": _CLIENT}},
        "/v1/tools": {"get": {**_op("The tools the caller may use, as OpenAI function tools",
                                    {"200": _json(_LIST)}, ("401", "431")),
                              "security": _CLIENT}},
        "/v1/tools/{name}": {"post": {**_op("Call a tool", {"200": _json(_TOOL_RESULT)},
                                            _TOOL_ERRORS, _ref("CallTool"), path_name=True),
                                      "security": _CLIENT}},
        "/admin/tools/{name}/batch": {"post": _op(
            "A batched tool's bounds on every replica, from its next batch",
            {"200": _json(_OBJECT)}, _ADMIN_ERRORS, _ref("BatchBounds"), admin=True,
            path_name=True)},
        "/health": {"get": _op("Liveness", {"200": _json(_OBJECT)}, ("431",))},
        "/ready": {"get": _op("Readiness: 503 while a model cannot answer",
                              {"200": _json(_OBJECT), "503": _json(_OBJECT)}, ("431",))},
        "/openapi.json": {"get": _op("This document", {"200": _json(_OBJECT)}, ("431",))},
        "/metrics": {"get": _op("Prometheus metrics",
                                {"200": {"text/plain": {"schema": {"type": "string"}}}},
                                ("431",))},
        "/debug/route": {"post": _op(
            "Dry run: the replica a generation body would get (admin)", {"200": _json(_OBJECT)},
            (*_ADMIN_ERRORS, "503"), {"anyOf": [_ref("ChatCompletionRequest"),
                                               _ref("CompletionRequest")]}, admin=True)},
        "/admin/adapters": {
            "get": _op("LoRA adapters", admin_list, _ADMIN_ERRORS, admin=True),
            "post": _op("Register a LoRA adapter", {"201": _json(_OBJECT)}, _ADMIN_ERRORS,
                        _ref("RegisterAdapter"), admin=True)},
        "/admin/adapters/{name}": {"delete": _op("Unregister a LoRA adapter",
                                                 {"200": _json(_OBJECT)}, _ADMIN_ERRORS,
                                                 admin=True, path_name=True)},
        "/admin/keys": {
            "get": _op("API keys, without secrets", admin_list, _ADMIN_ERRORS, admin=True),
            "post": _op("Create an API key (the secret is shown only in this answer)",
                        {"201": _json(_OBJECT)}, _ADMIN_ERRORS, _ref("CreateKey"), admin=True)},
        "/admin/keys/{name}": {"delete": _op("Revoke an API key", {"200": _json(_OBJECT)},
                                             _ADMIN_ERRORS, admin=True, path_name=True)},
        "/admin/status": {"get": _op("The fleet: models, pools, replicas, autoscalers",
                                     {"200": _json(_OBJECT)}, (*_ADMIN_ERRORS, "503"),
                                     admin=True)},
        "/admin/reload": {"post": _op("Re-read the config files and apply them",
                                      {"200": _json(_OBJECT)}, _ADMIN_ERRORS, admin=True)},
    }
