"""/generate honours sglang-router's `data_parallel_rank` as `routed_dp_rank` (launcher and HTTP workers).

sglang-router 0.3.2 with --dp-aware pins each request to a DP rank by adding `data_parallel_rank`
to its JSON body. SGLang 0.5.17 renamed that field `routed_dp_rank`: its OpenAI request models
still map the old name (protocol.py `_migrate_deprecated_dp_rank`), but /generate parses
`GenerateReqInput`, which has no alias, so FastAPI drops the key and the DP controller places
the request by its own load-balance method (round robin by default). This middleware applies
SGLang's own mapping rule to /generate bodies. Delete it once the router sends `routed_dp_rank`.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger("sglang_atom")

DEPRECATED_FIELD, FIELD = "data_parallel_rank", "routed_dp_rank"


class DataParallelRankAlias:
    """Pure ASGI middleware: in a POST/PUT /generate JSON object, `data_parallel_rank` becomes
    `routed_dp_rank` unless that is set; every other request and body passes through as sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not _is_generate(scope):
            return await self.app(scope, receive, send)
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if message["type"] == "http.request":  # the whole body, not a disconnect midway
            body = aliased(b"".join(m.get("body", b"") for m in messages))
            if body is not None:
                messages = [{"type": "http.request", "body": body, "more_body": False}]
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                scope = dict(scope, headers=headers + [(b"content-length", b"%d" % len(body))])

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _is_generate(scope) -> bool:
    path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
    return scope["type"] == "http" and scope["method"] in ("POST", "PUT") and path == "/generate"


def aliased(body: bytes) -> bytes | None:
    """The body with the deprecated field renamed, or None to leave it as sent.

    SGLang's rule for its OpenAI models: the old value is used when it is not null and
    `routed_dp_rank` is. GenerateReqInput validates the value as it validates `routed_dp_rank`:
    one int for the whole request, batches included; a list or other value gets a 400 (SGLang
    releases that still named the field `data_parallel_rank` refused those too)."""
    try:
        request = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8: SGLang answers it as it would have
        return None
    if not isinstance(request, dict) or request.get(DEPRECATED_FIELD) is None:
        return None
    if request.get(FIELD) is not None:
        return None
    request[FIELD] = request.pop(DEPRECATED_FIELD)
    return json.dumps(request).encode()


SGLANG_APP = "sglang.srt.entrypoints.http_server:app"
WORKER_APP = "sglang_atom.integration.http_worker_app:app"


class WorkerAppUvicorn:
    """Stands in for the uvicorn module in SGLang's http_server: a multi-worker run imports
    WORKER_APP (SGLang's app with the alias) where SGLang names its own app; all else is uvicorn."""

    def __init__(self, uvicorn):
        self.uvicorn = uvicorn

    def __getattr__(self, name):
        return getattr(self.uvicorn, name)

    def run(self, app, *args, **kwargs):
        return self.uvicorn.run(WORKER_APP if app == SGLANG_APP else app, *args, **kwargs)


def before_http_server(server_args, *args, **kwargs):
    """BEFORE SGLang's `_setup_and_run_http_server`: the app has not started serving yet."""
    from sglang.srt.entrypoints import http_server

    http_server.app.add_middleware(DataParallelRankAlias)
    if server_args.tokenizer_worker_num > 1:
        if server_args.enable_http2:
            # Granian's workers import SGLang's app by name too, through a call we do not redirect
            logger.warning(
                "sglang-atom: with --tokenizer-worker-num > 1 and --enable-http2, /generate ignores "
                "sglang-router's data_parallel_rank (SGLang 0.5.17 reads only routed_dp_rank there).")
        elif not isinstance(http_server.uvicorn, WorkerAppUvicorn):
            http_server.uvicorn = WorkerAppUvicorn(http_server.uvicorn)
