"""``x-llmgw-worker: K`` on every answer of worker K, so a client (or a test) can tell
which process served it. Installed only with ``server.workers`` above 1: a single
process pays nothing for it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

WORKER_HEADER = b"x-llmgw-worker"


class WorkerHeader:
    def __init__(self, app: ASGIApp, index: int) -> None:
        self.app = app
        self._value = str(index).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan passes through untouched
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (WORKER_HEADER, self._value)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)
