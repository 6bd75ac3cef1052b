"""The benchmark client against a local stand-in for SGLang's streaming /generate (loopback only)."""

import asyncio
import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import serving  # noqa: E402
from serving import WORKLOADS, Workload, ensure_port_free, load, provenance, scrape, summarize  # noqa: E402


async def generate(request):
    body = await request.json()
    n = body["sampling_params"]["max_new_tokens"]
    resp = web.StreamResponse()
    await resp.prepare(request)
    for i in range(1, n + 1):
        await asyncio.sleep(0.001)
        chunk = {"output_ids": [7] * i, "meta_info": {"completion_tokens": i,
                                                      "prompt_tokens": len(body["input_ids"])}}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


def serve_in_thread():
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}"


def test_workload_lengths_follow_the_range_ratio():
    reqs = Workload("x", 1000, 100).requests(200, seed=3)
    assert all(800 <= len(ids) <= 1000 and 80 <= n <= 100 for ids, n in reqs)
    short = WORKLOADS["short"].requests(200, seed=3)
    assert all(800 <= len(ids) <= 2400 and n == 64 for ids, n in short)


def test_client_measures_streamed_requests():
    url = serve_in_thread()
    reqs = [([1] * 50, 8)] * 12
    records, secs = load(url, reqs, concurrency=4)
    assert all(not r.error for r in records)
    assert all(r.output_len == 8 and len(r.itl) == 7 and 0 < r.ttft < r.e2e for r in records)
    summary = summarize(records, secs, n_gpus=2, concurrency=4)
    assert summary["completed"] == 12 and summary["failed"] == 0
    assert summary["input_tok_s"] == round(600 / secs, 1)
    assert summary["p50_itl_ms"] > 0.5 and summary["output_tok_s_per_user"] > 0


def test_open_loop_sends_at_poisson_times_with_a_cap_on_requests_in_flight():
    import random

    url = serve_in_thread()
    reqs = [([1] * 20, 4)] * 12
    records, secs = load(url, reqs, concurrency=100, request_rate=200.0, seed=5)
    assert all(not r.error and r.output_len == 4 for r in records)
    gaps = random.Random(5)
    expected = [0.0]
    for _ in reqs[1:]:
        expected.append(expected[-1] + gaps.expovariate(200.0))
    sent = [r.sent_at - records[0].sent_at for r in records]
    # each request leaves no earlier than its arrival time (asyncio sleeps at least the gap)
    assert all(s >= e - 1e-4 for s, e in zip(sent, expected))
    assert sent == sorted(sent) and secs >= expected[-1]
    assert summarize(records, secs, n_gpus=1, concurrency=100, closed_loop=False)["steady_input_tok_s"] == 0.0

    # all arrive at once; the cap of 2 keeps the rest waiting in the client
    records, _ = load(url, [([1] * 20, 8)] * 6, concurrency=2, request_rate=1e6, seed=1)
    spans = [(r.sent_at, r.sent_at + r.e2e) for r in records]
    most = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert most == 2


def test_client_processes_share_the_load_and_keep_request_order():
    import pytest
    from serving import load_measured

    url = serve_in_thread()
    reqs = [([1] * (10 + i), 2 + i % 5) for i in range(13)]
    records, secs, cpu = load_measured(url, reqs, concurrency=5, processes=2)
    assert [(r.input_len, r.output_len) for r in records] == [(len(ids), n) for ids, n in reqs]
    assert all(not r.error and 0 < r.ttft < r.e2e for r in records)
    # 3 + 2 clients in two processes: never more than 5 requests in flight together
    spans = [(r.sent_at, r.sent_at + r.e2e) for r in records]
    assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) <= 5
    assert secs >= max(b for _, b in spans) - min(a for a, _ in spans) - 1e-3 and cpu > 0
    with pytest.raises(ValueError, match="between 1 and the concurrency"):
        load_measured(url, reqs, concurrency=2, processes=3)


def test_scrape_sums_series():
    page = ('# HELP x\nsglang:atom_admission_decisions_total{decision="fire",reason="fill"} 3.0\n'
            'sglang:num_running_reqs 4\nsglang:atom_admission_decisions_total{decision="fire",reason="fill"} 2.0\n')
    assert scrape(page) == {'sglang:atom_admission_decisions_total{decision="fire",reason="fill"}': 5.0}


def test_steady_rate_counts_requests_sent_between_first_wave_and_last_send():
    from serving import Record, steady_input_rate

    recs = []
    for i in range(4):  # first wave at t=0, each lasting 1 s; then one send per second
        recs.append(Record(100, sent_at=0.0, e2e=1.0 + i))
    for i in range(4):
        recs.append(Record(200, sent_at=1.0 + i, e2e=1.0))
    # completions at 1,2,2,3,3,4,4,5. concurrency 4: window t=3..4 holds the sends at 3 and 4
    assert steady_input_rate(recs, 4) == (200 * 2) / 1.0
    # concurrency 2: window t=2..4 holds the sends at 2, 3 and 4
    assert steady_input_rate(recs, 2) == (200 * 3) / 2.0
    assert steady_input_rate(recs[:2], 2) == 0.0


def test_every_result_file_names_command_machine_and_date(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/tbo_serving.py", "perf", "--dp", "4"])
    gpu = "GPU 0: NVIDIA H200 (UUID: GPU-0)"
    monkeypatch.setattr(serving.subprocess, "run", lambda cmd, **kw: SimpleNamespace(stdout=gpu + "\n"))
    p = provenance()
    assert p["command"] == "python3 benchmarks/tbo_serving.py perf --dp 4"
    assert p["machine"] == gpu  # nvidia-smi -L
    assert p["date"].startswith("20") and p["date"].endswith("+00:00")

    def no_nvidia_smi(cmd, **kw):
        raise FileNotFoundError(cmd[0])
    monkeypatch.setattr(serving.subprocess, "run", no_nvidia_smi)
    assert provenance()["machine"] == "cpu"


def test_server_refuses_a_port_another_process_holds(tmp_path):
    """A leftover server on the port would otherwise be timed in place of the new one."""
    import socket

    import pytest
    from serving import Server

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        server = Server(["--model-path", "unused"], str(tmp_path / "server.log"), port=held.getsockname()[1])
        with pytest.raises(RuntimeError, match="is in use"):
            server.__enter__()
    assert server.proc is None  # nothing was started


def test_sigterm_unwinds_a_benchmark_so_its_server_is_stopped(tmp_path):
    """`timeout` ends a run with SIGTERM; the server's `with` block must still run its exit."""
    import subprocess
    import textwrap

    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent / "benchmarks")!r})
        import serving

        server = serving.Server([], {str(tmp_path / "s.log")!r}, port=0)  # never becomes ready
        try:
            with server:
                os.kill(os.getpid(), signal.SIGTERM)
                print("not reached", flush=True)
        finally:
            print("exited", server.proc.poll() is not None, flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "exited True" in proc.stdout, proc.stdout + proc.stderr
    assert "not reached" not in proc.stdout


def test_port_probe_accepts_a_port_whose_last_server_left_time_wait():
    """A stopped server's connections linger in TIME_WAIT; the next server may take the port
    (a plain bind refused it between the two servers of a tbo_serving check on 2xH200)."""
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first, so its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    ensure_port_free(port)


def test_check_judges_a_greedy_flip_by_the_reference_margin():
    import tbo_serving

    def answer(prompt_lps, out_ids, tops):
        return {"output_ids": out_ids, "meta_info": {
            "input_token_logprobs": [[None, 0, None]] + [[lp, 0, None] for lp in prompt_lps],
            "output_top_logprobs": [[[lp, tok, None] for lp, tok in pos] for pos in tops]}}

    # plain picked 890 over 264 by 0.02 nats; TBO moved prompt logprobs by up to 0.09
    plain = answer([-9.0, -9.2], [890, 264], [[(-5.00, 890), (-5.02, 264)], [(-4.0, 264), (-6.0, 1)]])
    tbo = answer([-9.09, -9.2], [264, 264], [[(-5.01, 264), (-5.03, 890)], [(-4.0, 264), (-6.0, 1)]])
    c = tbo_serving._compare(plain, tbo)
    assert (c["same_output_ids"], c["first_diff_position"], c["first_diff_margin"]) == (False, 0, 0.02)
    assert c["logprob_max_abs_diff"] == 0.09 and c["flip_within_noise"] is True
    # the same flip against a clear winner (margin 2 nats) is not noise
    clear = answer([-9.0, -9.2], [890, 264], [[(-3.0, 890), (-5.0, 264)], [(-4.0, 264), (-6.0, 1)]])
    assert tbo_serving._compare(clear, tbo)["flip_within_noise"] is False
    assert "first_diff_margin" not in tbo_serving._compare(plain, plain)


def test_wrong_prefix_control_keeps_the_second_half_and_compares_only_it():
    import random

    import tbo_serving

    prompt = (1, list(range(100, 110)))
    (rank, ids), half = tbo_serving.replaced_prefix(random.Random(0), prompt, vocab=50)
    assert (rank, half, ids[half:]) == (1, 5, list(range(105, 110)))
    assert all(3 <= t < 50 for t in ids[:half])  # other ids, same positions

    def answer(prompt_lps):
        return {"meta_info": {"input_token_logprobs": [[None, 0, None]] + [[lp, 0, None] for lp in prompt_lps]}}

    # positions 1..4; from position 3 on only the last two count
    a, b = answer([-1.0, -2.0, -3.0, -4.0]), answer([-9.0, -9.0, -3.5, -4.25])
    assert tbo_serving._logprob_diffs(a, b, start=3) == [0.5, 0.25]
    assert tbo_serving._logprob_diffs(a, b)[:2] == [8.0, 7.0]


def test_router_cluster_places_servers_on_their_own_gpus_or_shares_a_smaller_machine():
    from router_cluster import server_gpus, server_port

    assert [server_gpus(i, 2, 4) for i in range(2)] == ["0,1", "2,3"]  # 4xH200: a pair each
    assert [server_gpus(i, 2, 2) for i in range(2)] == ["0,1", "0,1"]  # 2xH200: shared
    assert [server_gpus(i, 1, 4) for i in range(4)] == ["0", "1", "2", "3"]
    # SGLang 0.5.17 takes ports P+233.. for a server on P: servers 100 apart do not collide
    assert [server_port(30000, i) for i in range(2)] == [30100, 30200]


def test_perf_counts_prefill_passes_per_wave_and_medians_the_unskewed_waves():
    import tbo_serving

    page = ('# TYPE sglang:atom_gathered_rows_padding_ratio histogram\n'
            'sglang:atom_gathered_rows_padding_ratio_count{pass="extend"} 9.0\n'
            'sglang:atom_gathered_rows_padding_ratio_count{pass="decode"} 40.0\n')
    assert tbo_serving.extend_passes(page) == 9.0
    assert tbo_serving.extend_passes("") == 0.0  # no pass yet: the series is absent
    # 4 prompts per rank: the 5-pass waves had a prompt arrive a pass late on some rank
    times, passes = [0.030, 0.041, 0.029, 0.038, 0.031], [4.0, 5.0, 4.0, 5.0, 4.0]
    assert tbo_serving.aligned_median(times, passes, 4) == 0.030
    assert tbo_serving.aligned_median(times, [5.0] * 5, 4) is None


class _FakeServer:
    """Stands in for serving.Server in tbo_serving's check/perf: no process, a metrics page."""

    passes = 0.0
    started: list[list[str]] = []

    envs: list = []

    def __init__(self, flags, log_path, env=None):
        self.flags, self.url, self.scrapes = flags, "http://fake", 0
        _FakeServer.started.append(list(flags))
        _FakeServer.envs.append(env)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_ready(self, timeout):
        return 1.0

    def get(self, path):
        # a TBO server's split counters grow by 3 split and 1 whole pass between scrapes
        self.scrapes += 1
        split = (f'sglang:atom_tbo_prefill_passes_total{{split="yes"}} {3.0 * self.scrapes}\n'
                 f'sglang:atom_tbo_prefill_passes_total{{split="no"}} {1.0 * self.scrapes}\n'
                 if "--enable-two-batch-overlap" in self.flags else "")
        return split + f'sglang:atom_gathered_rows_padding_ratio_count{{pass="extend"}} {_FakeServer.passes}\n'


def _local_logprob(ids, i):
    """A prompt logprob at position i that depends on that token and the one before it."""
    return -((ids[i - 1] * 31 + ids[i]) % 97) / 10.0


def _context_answer(ids, max_new):
    lps = [[None, ids[0], None]] + [[_local_logprob(ids, i), ids[i], None] for i in range(1, len(ids))]
    return {"output_ids": [7] * max_new,
            "meta_info": {"input_token_logprobs": lps,
                          "output_top_logprobs": [[[-1.0, 7, None], [-3.0, 8, None]]] * max_new}}


def test_check_runs_the_wrong_prefix_control_and_compares_only_the_second_half(tmp_path, monkeypatch):
    """The whole `check` flow with the servers faked: identical servers give zero TBO deltas, the
    control (first half replaced) moves the second half's logprobs, and the ratio is recorded."""
    import argparse

    import tbo_serving

    sent = []

    def fake_wave(url, prompts, max_new, logprobs):
        sent.append([(rank, ids) for rank, ids in prompts])
        return [_context_answer(ids, max_new) for _, ids in prompts]

    monkeypatch.setattr(tbo_serving, "Server", _FakeServer)
    monkeypatch.setattr(tbo_serving, "wave", fake_wave)
    monkeypatch.setattr(tbo_serving, "model_config", lambda model: {"vocab_size": 1000})
    monkeypatch.setattr(tbo_serving.random_checkpoint, "write", lambda model, path: path)
    args = argparse.Namespace(out=str(tmp_path), models="models/qwen3-moe-check", dp=2, tbo_comm="nccl",
                              gatherv=False, start_timeout=10, server_env={})
    out = {}
    tbo_serving.check(args, out)
    rows = out["models"]["qwen3-moe-check"]
    assert [(r["rank"], r["prompt_len"]) for r in rows] == [(0, 300), (0, 700), (0, 1500), (1, 2600), (1, 3000)]
    assert all(r["compared"]["same_output_ids"] and r["compared"]["logprob_max_abs_diff"] == 0 for r in rows)
    assert out["compared"] == "tbo-nccl"
    # 3000 tokens on the wave-2 rank: wave 2 on both servers, the plain server's serial resend,
    # and the control (plain server only), whose first half differs
    long_prompts = [ids for w in sent for rank, ids in w if len(ids) == 3000]
    original, serial, replaced, tbo = long_prompts  # the plain server's three, then the TBO server's
    assert serial == tbo == original
    assert replaced[:1500] != original[:1500] and replaced[1500:] == original[1500:]
    control = out["wrong_prefix_control"]["qwen3-moe-check"]
    assert (control["prompt_len"], control["replaced_prefix_tokens"]) == (3000, 1500)
    # with these local logprobs only position 1500 of the second half sees the replaced half:
    # the mean over the second half, not over the whole prompt, is what the control records
    second_half = [abs(_local_logprob(original, i) - _local_logprob(replaced, i)) for i in range(1500, 3000)]
    whole = [abs(_local_logprob(original, i) - _local_logprob(replaced, i)) for i in range(1, 3000)]
    assert control["logprob_mean_abs_diff"] == round(sum(second_half) / 1500, 6)
    assert control["logprob_mean_abs_diff"] < sum(whole) / 2999 / 10
    assert control["compared_worst_mean_over_this_mean"] == 0.0
    assert out["servers"]["qwen3-moe-check-tbo-nccl"]["prefill_passes"] == {"yes": 3.0, "no": 1.0}
    assert out["servers"]["qwen3-moe-check-plain"]["prefill_passes"] == {"yes": 0, "no": 0}


def test_perf_records_passes_per_wave_and_the_aligned_speedup(tmp_path, monkeypatch):
    import argparse
    import time

    import tbo_serving

    waves = []

    def fake_wave(url, prompts, max_new, logprobs):
        waves.append(len(prompts))
        _FakeServer.passes += 5 if len(waves) % 4 == 0 else 4  # every fourth wave is skewed
        time.sleep(0.01)  # a wave takes time (times are rounded to 0.1 ms per pass-worth)
        return []

    monkeypatch.setattr(tbo_serving, "Server", _FakeServer)
    monkeypatch.setattr(tbo_serving, "wave", fake_wave)
    monkeypatch.setattr(tbo_serving, "model_config", lambda model: {})
    args = argparse.Namespace(out=str(tmp_path), models="models/qwen3-235b-width", dp=2, tokens="64",
                              prompts_per_rank=4, warmup=1, repeats=3, tbo_comm="nccl", gatherv=False,
                              skip_plain=False,
                              start_timeout=10, cuda_graph=False, server_env={"SGLANG_MOE_CONFIG_DIR": "d"})
    out = {}
    _FakeServer.started, _FakeServer.envs = [], []
    tbo_serving.perf(args, out)
    plain, tbo = out["runs"]
    assert _FakeServer.envs == [{"SGLANG_MOE_CONFIG_DIR": "d"}] * 2  # --moe-configs reaches both servers
    # perf measures the split itself: the TBO server splits every pass, whatever the model's
    # derived split size; the plain server has no such flag
    plain_flags, tbo_flags = _FakeServer.started
    assert "--atom-tbo-min-tokens" not in plain_flags
    assert tbo_flags[tbo_flags.index("--atom-tbo-min-tokens") + 1] == "256"
    assert "--disable-cuda-graph" in plain_flags and "--disable-cuda-graph" in tbo_flags
    assert waves == [8] * 8  # 4 prompts on each of 2 ranks, 1 warm-up + 3 timed waves per server
    assert plain["passes_per_wave"] == [4.0, 4.0, 5.0] and tbo["passes_per_wave"] == [4.0, 4.0, 5.0]
    assert plain["aligned_median_s"] is not None
    assert "aligned_median" in out["speedup_off_over_on"]["qwen3-235b-width@64@tbo-nccl"]
    # --cuda-graph: both servers keep SGLang's graphs (plain prefill in its breakable graphs)
    _FakeServer.started, args.cuda_graph = [], True
    tbo_serving.perf(args, {})
    assert not any("--disable-cuda-graph" in flags for flags in _FakeServer.started)


def test_perf_compares_gatherv_servers_with_and_without_tbo(tmp_path, monkeypatch):
    """--gatherv --tbo-comm none,nccl: the plain server, gatherv alone, then TBO with gatherv;
    each speedup is against the plain server and named by what its server ran."""
    import argparse
    import time

    import pytest
    import tbo_serving

    monkeypatch.setattr(tbo_serving, "Server", _FakeServer)
    # a wave takes time (times are rounded to 0.1 ms per pass-worth)
    monkeypatch.setattr(tbo_serving, "wave", lambda url, prompts, max_new, logprobs: time.sleep(0.01) or [])
    monkeypatch.setattr(tbo_serving, "model_config", lambda model: {})
    args = argparse.Namespace(out=str(tmp_path), models="models/qwen3-235b-width", dp=2, tokens="64",
                              prompts_per_rank=1, warmup=0, repeats=1, tbo_comm="none,nccl", gatherv=True,
                              skip_plain=False, start_timeout=10, cuda_graph=False, server_env={})
    out = {}
    _FakeServer.started = []
    tbo_serving.perf(args, out)
    plain, gatherv, both = _FakeServer.started
    assert "--atom-dp-gatherv" not in plain and "--enable-two-batch-overlap" not in plain
    assert gatherv[gatherv.index("--atom-dp-gatherv") + 1] == "1"
    assert "--enable-two-batch-overlap" not in gatherv and "--atom-tbo-min-tokens" not in gatherv
    assert "--atom-dp-gatherv" in both and both[both.index("--atom-tbo-comm") + 1] == "nccl"
    assert [r["variant"] for r in out["runs"]] == ["plain", "gatherv", "tbo-nccl+gatherv"]
    assert sorted(out["speedup_off_over_on"]) == ["qwen3-235b-width@64@gatherv",
                                                   "qwen3-235b-width@64@tbo-nccl+gatherv"]
    args.gatherv = False  # 'none' without --gatherv would compare the plain server with itself
    with pytest.raises(ValueError, match="add --gatherv"):
        tbo_serving.perf(args, {})


def test_profile_summarizes_gpu_and_host_time_of_each_servers_trace(tmp_path, monkeypatch):
    """`tbo_serving profile` with the servers faked: each writes a TP-0 trace on /stop_profile
    (as SGLang's ranks do), and the result holds its GPU summary and its host time by function."""
    import argparse
    import gzip
    import json as _json
    import os

    import tbo_serving

    class ProfilingServer(_FakeServer):
        def post(self, path, body):
            if path == "/start_profile":
                self.trace_dir = body["output_dir"]
            elif path == "/stop_profile":
                os.makedirs(self.trace_dir, exist_ok=True)
                events = [{"ph": "X", "cat": "kernel", "name": "fused_moe_kernel", "ts": 0, "dur": 500,
                           "args": {"stream": 7, "correlation": 3}},
                          {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 100,
                           "dur": 5, "args": {"correlation": 3}},
                          {"ph": "X", "cat": "python_function", "name": "tbo.py(5): prepare", "ts": 0,
                           "dur": 2000, "args": {"Python id": 1, "Python parent id": None}},
                          {"ph": "X", "cat": "python_function", "ts": 50, "dur": 1000,
                           "name": "sglang/srt/model_executor/model_runner.py(1382): forward",
                           "args": {"Python id": 2, "Python parent id": 1}}]
                with gzip.open(os.path.join(self.trace_dir, "1-TP-0-DP-0.trace.json.gz"), "wt") as f:
                    _json.dump({"traceEvents": events}, f)
            return {}

    monkeypatch.setattr(tbo_serving, "Server", ProfilingServer)
    waves = []
    monkeypatch.setattr(tbo_serving, "wave",
                        lambda url, prompts, max_new, logprobs: waves.append(len(prompts)) or [])
    args = argparse.Namespace(out=str(tmp_path), models="models/qwen3-moe-tiny", dp=2, tokens="4096",
                              warmup=1, tbo_comm="nccl", gatherv=False, skip_plain=False, start_timeout=10,
                              cuda_graph=False, prompts_per_rank=3, server_env={})
    out = {}
    tbo_serving.profile(args, out)
    assert sorted(out["profiles"]) == ["qwen3-moe-tiny-plain", "qwen3-moe-tiny-tbo-nccl"]
    assert waves == [6] * 4  # 3 prompts on each of 2 ranks: 1 warm-up + 1 profiled wave per server
    for p in out["profiles"].values():
        assert p["summary"]["streams"]["7"]["moe"] == 0.5
        assert p["python"]["inclusive"][0] == {"function": "tbo.py(5): prepare", "ms": 2.0}
        assert [(x["kernels"], x["host_ms"], x["split"]) for x in p["passes"]] == [(1, 1.0, False)]


def test_frontend_probe_reads_sglangs_latency_histograms_and_cpu_per_process():
    """A cell of frontend_probe against the stand-in, with a /metrics page like SGLang's that
    grows with the requests served, and a real child process in the server's place."""
    import subprocess

    import frontend_probe

    served = [0]

    async def counted(request):
        served[0] += 1
        return await generate(request)

    async def metrics(request):
        n = served[0]
        lab = 'model_name="m"'
        page = (f"sglang:time_to_first_token_seconds_sum{{{lab}}} {0.05 * n}\n"
                f"sglang:time_to_first_token_seconds_count{{{lab}}} {n}\n"
                f'sglang:per_stage_req_latency_seconds_sum{{{lab},stage="request_process"}} {0.002 * n}\n'
                f'sglang:per_stage_req_latency_seconds_count{{{lab},stage="request_process"}} {n}\n')
        return web.Response(text=page)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/generate", counted)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from serving import Server

        server = SimpleNamespace(url=url, proc=stand_in, get=lambda path: Server.get(server, path))
        run = frontend_probe.run_cell(server, "small", concurrency=4, processes=2, repeat=0,
                                      requests_per_client=2, n_gpus=1)
    finally:
        stand_in.kill()
    assert run["completed"] == 8 and run["client_processes"] == 2
    assert run["server_ttft_ms"] == 50.0 and run["queue_ms"] is None
    assert run["stage_ms"] == {"request_process": 2.0}
    cpu = run["cpu_share"]
    assert set(cpu) == {"main (HTTP + tokenizer manager)", "client (all processes)", "client (per process)"}
    assert cpu["client (all processes)"] > 0 and cpu["main (HTTP + tokenizer manager)"] < 0.5


def test_rank_traces_finds_each_rank_once(tmp_path):
    import tbo_serving

    for name in ("1795504477.32-TP-0-DP-0.trace.json.gz", "1795504477.32-TP-1-DP-1.trace.json.gz",
                 "1795504477.32-TP-10-DP-10.trace.json.gz", "1795504478.00-TP-1-DP-1.trace.json.gz",
                 "TP-2.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    found = tbo_serving.rank_traces(str(tmp_path))
    assert sorted(found) == [0, 1, 10]
    assert found[1].endswith("1795504477.32-TP-1-DP-1.trace.json.gz")  # the first export of a rank
    assert tbo_serving.rank_traces(str(tmp_path / "absent")) == {}


def test_pass_timing_keeps_host_and_gpu_times_only():
    import tbo_serving

    p = {"split": True, "host_ms": 65.1, "span_ms": 64.4, "kernels": 280, "compute_idle_ms": 10.1,
         "gpu_after_host_ms": -0.3, "gpu_wait_before_ms": 5.2, "streams": {"7": {"gemm": 4.5}}}
    assert tbo_serving._pass_timing(p) == {"split": True, "host_ms": 65.1, "span_ms": 64.4,
                                           "compute_idle_ms": 10.1, "gpu_after_host_ms": -0.3,
                                           "gpu_wait_before_ms": 5.2}
    first = {"split": False, "host_ms": 1.0, "span_ms": 0.0, "streams": {}}  # a pass with no GPU work
    assert tbo_serving._pass_timing(first) == {"split": False, "host_ms": 1.0, "span_ms": 0.0}
