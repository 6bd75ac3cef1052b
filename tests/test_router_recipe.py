"""The README's router recipe, with the real sglang-router binary on CPU and two stand-in
workers on loopback that answer like SGLang servers with --dp 2: requests must spread over both
servers and, with --dp-aware, be pinned to both DP ranks of each."""

import asyncio
import collections
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from aiohttp import web


def free_port():
    """A port free now, for the router binary, which takes its port on the command line (another
    process could take it before the router binds it: the one race left)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(seen):
    async def info(request):
        return web.json_response({"dp_size": 2, "model_path": "models/qwen3-moe-tiny",
                                  "served_model_name": "qwen3-moe-tiny", "tp_size": 2})

    async def model_info(request):
        return web.json_response({"model_path": "models/qwen3-moe-tiny", "is_generation": True})

    async def ok(request):
        return web.Response(text="ok")

    async def generate(request):
        body = await request.json()
        seen.append(body.get("data_parallel_rank", body.get("routed_dp_rank")))
        return web.json_response({"text": "", "output_ids": [7],
                                  "meta_info": {"completion_tokens": 1, "prompt_tokens": 3}})

    app = web.Application()
    for path in ("/server_info", "/get_server_info"):
        app.router.add_get(path, info)
    app.router.add_get("/get_model_info", model_info)
    app.router.add_get("/model_info", model_info)
    for path in ("/health", "/health_generate"):
        app.router.add_get(path, ok)
    app.router.add_post("/generate", generate)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)  # the kernel's free port, held from here on
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}"


def test_dp_aware_router_spreads_requests_over_servers_and_ranks(tmp_path):
    seen = [[], []]
    workers = [start_worker(seen[0]), start_worker(seen[1])]
    port = free_port()
    log = open(tmp_path / "router.log", "w")
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
         "--policy", "round_robin", "--dp-aware", "--worker-urls", *workers],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                assert router.poll() is None and time.time() < deadline, (tmp_path / "router.log").read_text()
                time.sleep(0.5)
        for _ in range(16):
            req = urllib.request.Request(url + "/generate", data=json.dumps(
                {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1}}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
    finally:
        router.terminate()
        router.wait(timeout=30)
        log.close()
    counts = [collections.Counter(s) for s in seen]
    assert sum(len(s) for s in seen) == 16, (tmp_path / "router.log").read_text()[-3000:]
    # Every (server, DP rank) pair gets a share. Not exactly 4 each: seen once in CI as 5/4/4/3,
    # with the aiohttp workers logging the router's HTTP/2 prefaces as bad requests (a retry
    # that shifts the round robin is the likely cause; not confirmed). Sending everything to
    # rank 0, as a router without --dp-aware does, fails this.
    assert all(sorted(c) == [0, 1] and min(c.values()) >= 2 for c in counts), counts
