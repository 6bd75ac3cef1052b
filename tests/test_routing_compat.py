"""sglang-router 0.3.2 pins requests with `data_parallel_rank`; SGLang 0.5.17's /generate reads only
`routed_dp_rank`. Real SGLang 0.5.17 throughout: its FastAPI app, its GenerateReqInput parsing and
its launcher function. The only stand-ins are the tokenizer manager (the object /generate hands
the parsed request to; it records the request's routed_dp_rank) and, in the launcher test,
uvicorn's server loop (replaced by requests through a TestClient on the app it is given)."""

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from sglang_atom.integration import routing_compat, runtime, symbols
from sglang_atom.integration.routing_compat import DataParallelRankAlias
from sglang_helpers import CPU_ARGS, QWEN, last_json, run_python


class RecordingTokenizerManager:
    """Stands in for SGLang's TokenizerManager: records what /generate parsed, answers one output."""

    def __init__(self):
        self.routed_dp_ranks = []

    def generate_request(self, obj, request):
        self.routed_dp_ranks.append(obj.routed_dp_rank)

        async def one_output():
            yield {"text": "", "output_ids": [7], "meta_info": {}}

        return one_output()


@pytest.fixture(scope="module")
def sglang_app():
    """SGLang's real module-level app, with the stand-in as its tokenizer manager."""
    from sglang.srt.entrypoints import http_server

    manager = RecordingTokenizerManager()
    http_server.set_global_state(http_server._GlobalState(
        tokenizer_manager=manager, template_manager=None, scheduler_info={}))
    return http_server.app, manager


def generate(app, manager, body):
    """POST /generate; the response status and the routed_dp_rank SGLang parsed (None if the
    request never reached the tokenizer manager)."""
    before = len(manager.routed_dp_ranks)
    status = TestClient(app).post("/generate", json=body).status_code
    parsed = manager.routed_dp_ranks[before:]
    return status, parsed[0] if parsed else None


def test_without_the_alias_generate_drops_data_parallel_rank(sglang_app):
    """The defect: SGLang 0.5.17 accepts the router's body and routes it round-robin."""
    app, manager = sglang_app
    assert generate(app, manager, {"input_ids": [1, 2, 3], "data_parallel_rank": 1}) == (200, None)


@pytest.mark.parametrize("body, rank", [
    ({"input_ids": [1, 2, 3], "data_parallel_rank": 1}, 1),
    ({"input_ids": [1, 2, 3], "data_parallel_rank": 1, "routed_dp_rank": 0}, 0),  # explicit wins
    ({"input_ids": [1, 2, 3], "data_parallel_rank": 1, "routed_dp_rank": None}, 1),  # SGLang's rule
    ({"input_ids": [[1, 2], [3, 4]], "data_parallel_rank": 1}, 1),  # one rank for the whole batch
    ({"input_ids": [1, 2, 3], "routed_dp_rank": 1}, 1),
    ({"input_ids": [1, 2, 3]}, None),
])
def test_generate_reads_data_parallel_rank_as_routed_dp_rank(sglang_app, body, rank):
    app, manager = sglang_app
    assert generate(DataParallelRankAlias(app), manager, body) == (200, rank)


def test_a_rank_list_is_refused_as_routed_dp_rank_is(sglang_app):
    """GenerateReqInput takes one rank for a whole batch; a list is refused under either name."""
    app, manager = sglang_app
    aliased = generate(DataParallelRankAlias(app), manager, {"input_ids": [[1], [2]], "data_parallel_rank": [0, 1]})
    assert aliased == generate(app, manager, {"input_ids": [[1], [2]], "routed_dp_rank": [0, 1]}) == (400, None)


def through_alias(method, path, chunks, headers=(), root_path=""):
    """Run one request through the middleware in front of a recording ASGI app; returns the
    request headers and body messages that app received."""
    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = scope["headers"]
        seen["messages"] = [await receive()]
        while seen["messages"][-1].get("more_body"):
            seen["messages"].append(await receive())

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "method": method, "path": root_path + path, "root_path": root_path,
             "headers": list(headers)}
    asyncio.run(DataParallelRankAlias(app)(scope, receive, None))
    return seen["headers"], seen["messages"]


def test_a_body_in_several_chunks_is_renamed_and_its_length_fixed():
    body = json.dumps({"text": "hi", "data_parallel_rank": 3}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    seen_headers, messages = through_alias("POST", "/generate", [body[:10], body[10:]], headers,
                                           root_path="/api")
    assert [m["body"] for m in messages] == [b'{"text": "hi", "routed_dp_rank": 3}']
    assert dict(seen_headers) == {b"content-type": b"application/json", b"content-length": b"35"}


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/generate", b"not json"),
    ("POST", "/generate", b'[{"data_parallel_rank": 1}]'),
    ("POST", "/generate", b'{"text": "hi"}'),
    ("PUT", "/generate", b'{"data_parallel_rank": 1,  "routed_dp_rank": 0}'),
    ("POST", "/v1/completions", b'{"data_parallel_rank": 1}'),  # SGLang's OpenAI models map it
    ("POST", "/api/generate", b'{"data_parallel_rank": 1}'),  # Ollama's route, not SGLang's own
])
def test_other_requests_pass_through_as_sent(method, path, body):
    chunks = [body[:5], body[5:]]
    headers = [(b"content-length", b"%d" % len(body))]
    seen_headers, messages = through_alias(method, path, chunks, headers)
    assert seen_headers == headers
    assert [m["body"] for m in messages] == chunks


def test_the_hook_and_what_it_reads_are_checked_symbols():
    """install() requires every hook target and these reads before applying anything, so a later
    SGLang without them stops the launcher with a message naming them."""
    from sglang.srt.plugins.hook_registry import HookType

    hook = (symbols.HTTP_SERVER_TARGET, routing_compat.before_http_server, HookType.BEFORE)
    assert hook in runtime.runtime_hooks(launcher=True)
    assert symbols.HTTP_SERVER_READS == ("sglang.srt.entrypoints.http_server.app",
                                         "sglang.srt.entrypoints.http_server.uvicorn",
                                         "sglang.srt.managers.io_struct.GenerateReqInput.routed_dp_rank")
    assert symbols.missing([symbols.HTTP_SERVER_TARGET, *symbols.HTTP_SERVER_READS]) == []


LAUNCHER_ARGS = ["--model-path", QWEN, *CPU_ARGS, "--tp", "2", "--dp", "2", "--enable-dp-attention"]

# In a subprocess: a stand-in tokenizer manager that records the routed_dp_rank /generate parsed,
# and requests with the router's field and with SGLang's own through a TestClient on `app`.
RECORD_RANKS = """
from fastapi.testclient import TestClient
ranks = []
class Manager:
    startup_time = 0.0
    def generate_request(self, obj, request):
        ranks.append(obj.routed_dp_rank)
        async def one():
            yield {"text": ""}
        return one()
def send(app):
    client = TestClient(app)
    for body in ({"input_ids": [1], "data_parallel_rank": 1}, {"input_ids": [1], "routed_dp_rank": 0}):
        client.post("/generate", json=body).raise_for_status()
"""

# The launcher's start as `python -m sglang.launch_server` runs it: plugins loaded, ARGV parsed
# (or the JSON list in argv[1]), SGLang's http_server imported, with RECORD_RANKS.
LAUNCHER_SETUP = """
import json, sys, uvicorn
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
server_args = prepare_server_args(json.loads(sys.argv[1]) if len(sys.argv) > 1 else ARGV)
from sglang.srt.entrypoints import http_server
""" + RECORD_RANKS

# The launcher as `python -m sglang.launch_server` runs it, up to SGLang's own
# `_setup_and_run_http_server`, whose uvicorn.run sends the requests instead of serving.
LAUNCH = LAUNCHER_SETUP + """
uvicorn.run = lambda app, **kwargs: send(app)
http_server._setup_and_run_http_server(server_args, Manager(), None, None, [{}], None)
print(json.dumps({"ranks": ranks}))
"""


@pytest.mark.parametrize("backend, ranks", [("atom", [1, 0]), ("sglang", [None, 0])])
def test_the_launcher_installs_the_alias_only_with_backend_atom(backend, ranks):
    proc = run_python(LAUNCH.replace("ARGV", repr(LAUNCHER_ARGS + ["--backend", backend])))
    assert last_json(proc) == {"ranks": ranks}, proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["_setup_and_run_http_server", "app"])
def test_an_sglang_without_the_hooked_function_or_the_app_stops_the_launcher(name):
    code = (f"import sglang.srt.entrypoints.http_server as h\ndel h.{name}\n"
            + LAUNCH.replace("ARGV", repr(LAUNCHER_ARGS + ["--backend", "atom"])))
    proc = run_python(code)
    assert proc.returncode != 0 and '"ranks"' not in proc.stdout
    assert f"lacks sglang.srt.entrypoints.http_server.{name}" in proc.stderr, proc.stderr[-3000:]


# The launcher with several HTTP workers, up to SGLang's uvicorn.run (which would start them); it
# prints the app name and worker count uvicorn was given.
LAUNCH_WORKERS = LAUNCHER_SETUP + """
Manager.socket_mapping = type("SocketMapping", (), {"clear_all_sockets": staticmethod(lambda: None)})
seen = {}
uvicorn.run = lambda app, **kwargs: seen.update(app=app, workers=kwargs.get("workers"))
http_server._setup_and_run_http_server(server_args, Manager(), None, None, [{}], None)
print(json.dumps(seen))
"""

# One HTTP worker as uvicorn starts it: a fresh interpreter, no plugins loaded, importing the app
# by the name it was given.
WORKER = """
import json
from uvicorn.importer import import_from_string
app = import_from_string(APP)
from sglang.srt.entrypoints import http_server
""" + RECORD_RANKS + """
http_server.set_global_state(http_server._GlobalState(tokenizer_manager=Manager(), template_manager=None,
                                                      scheduler_info={}))
send(app)
print(json.dumps({"ranks": ranks}))
"""


@pytest.mark.parametrize("backend, app, ranks", [
    ("atom", routing_compat.WORKER_APP, [1, 0]),
    ("sglang", routing_compat.SGLANG_APP, [None, 0])])
def test_http_workers_of_tokenizer_worker_num_honour_the_rank_with_backend_atom(backend, app, ranks):
    args = LAUNCHER_ARGS + ["--backend", backend, "--tokenizer-worker-num", "2"]
    proc = run_python(LAUNCH_WORKERS.replace("ARGV", repr(args)))
    assert last_json(proc) == {"app": app, "workers": 2}, proc.stderr[-3000:]
    worker = run_python(WORKER.replace("APP", repr(app)))
    assert last_json(worker) == {"ranks": ranks}, worker.stderr[-3000:]
