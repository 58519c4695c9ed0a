"""The fleet's admin routes (``Authorization: Bearer <admin key>``, as every admin route):

    GET  /admin/status   models, pools, replicas with their state, autoscalers' wishes
                         and last acts, queued requests, traffic splits, the last reload
    POST /admin/reload   re-read the config files the gateway started with and apply
                         them while traffic flows; answers the plan (400: the config is
                         refused with `llmgw check`'s message, nothing changed)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.admin import authorize, tell_peers
from llmgw.api.body import json_response
from llmgw.api.errors import error_response
from llmgw.config import ConfigError
from llmgw.errors import GatewayError, InvalidRequest, NoReplica
from llmgw.fleet.status import fleet_status


async def status(request: Request) -> Response:
    try:
        authorize(request)
    except GatewayError as exc:
        return error_response(exc)
    fleet, reloader = request.app.state.fleet, request.app.state.reloader
    if fleet is None:
        return error_response(NoReplica("this gateway runs without a fleet (embedded use)"))
    return json_response(fleet_status(fleet, reloader))


async def reload(request: Request) -> Response:
    try:
        authorize(request)
        reloader = request.app.state.reloader
        if reloader is None:
            raise InvalidRequest("this gateway was not started from config files")
        try:
            plan = await reloader.reload()
        except ConfigError as exc:
            raise InvalidRequest(f"the new config is refused, nothing changed:\n{exc}",
                                 param="config") from None
    except GatewayError as exc:
        return error_response(exc)
    await tell_peers(request, "reload")
    return json_response({"applied": True, "plan": plan.as_dict()})
