"""Serving measurement: start/stop an SGLang server, drive it at fixed concurrency, summarize.

The client reports the metrics `sglang.bench_serving` reports (TTFT, TPOT, ITL and E2E
percentiles, input/output tok/s, tok/s per GPU and per user) but sends token ids straight to
`/generate`, so servers run with `--skip-tokenizer-init` and dummy weights need no tokenizer.
Workloads follow InferenceX's "random" dataset: input and output lengths uniform in
[range_ratio * L, L].
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field


# ----------------------------------------------------------------------------- server
def post_json(url: str, body: dict, timeout: float = 600) -> str:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; fail early if `proc` (the process serving it) exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def model_config(model_dir: str) -> dict:
    """A shipped model directory's HF config.json."""
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


# SGLang 0.5.17 gives a server on HTTP port P its dist-init port P+233 and ZMQ ports from P+234
# up (PortArgs.init_new), so servers on one machine on adjacent ports collide (seen on 4xH200,
# benchmarks/results/2026-11-22-router-4xh200/). Space them by a round 100.
SERVER_PORT_STRIDE = 100


def shared_mem_fractions(n: int, share: float) -> list[float]:
    """--mem-fraction-static for n servers started one after another on the same GPUs, so that
    each holds about `share` of the GPU's memory. SGLang 0.5.17 sizes a server's static memory
    (weights + KV pool) as a fraction of the memory free when it starts
    (kv_cache_configurator._profile_available_bytes), and server i starts with about
    1 - i * share of it free."""
    if not 0 < share or n * share >= 1:
        raise ValueError(f"{n} servers of {share} of the GPU memory each do not fit on one GPU")
    return [round(share / (1 - i * share), 3) for i in range(n)]


def ensure_port_free(port: int) -> None:
    """Refuse a port some process listens on: a server left running by an earlier, killed run
    answers there, and the readiness poll would then time that one (seen on 2xH200, 2026-11-22)."""
    with socket.socket() as probe:
        # SO_REUSEADDR: the previous server's closed connections sit in TIME_WAIT on the port for
        # a minute and fail a plain bind (seen on 2xH200, 2026-11-22, between the two servers of
        # one tbo_serving run); a socket still listening there fails the bind either way.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is in use: stop the process on it (a server left "
                               f"from an earlier run?) or choose another --port") from None


# Tuned Triton fused-MoE configs for the shipped bf16 models (benchmarks/moe_tune.py), for
# which SGLang 0.5.17 has none; see benchmarks/results/NOTES-moe-configs.md.
SHIPPED_MOE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moe_configs")


def sglang_moe_configs() -> str:
    """SGLang's own Triton fused-MoE config directory (its `configs/triton_*/`), found without
    importing SGLang (which would import torch in the client)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sglang is not installed here; --moe-configs needs its config files")
    path = os.path.join(spec.submodule_search_locations[0], "srt", "layers", "moe", "moe_runner",
                        "triton_utils", "configs")
    if not os.path.isdir(path):
        raise RuntimeError(f"SGLang's MoE config directory is not at {path}: this SGLang is not 0.5.17's layout")
    return path


def moe_config_dir(overlay: str, dest: str, stock: str | None = None) -> str:
    """A directory for SGLANG_MOE_CONFIG_DIR: SGLang reads kernel configs from that one directory
    only (DIR/configs/triton_<version>/), so link in all of SGLang's own and lay the files under
    `overlay`/configs on top. Returns `dest`."""
    stock = stock or sglang_moe_configs()
    if not os.path.isdir(os.path.join(overlay, "configs")):
        raise RuntimeError(f"{overlay} has no configs/ directory (write one with benchmarks/moe_tune.py)")
    configs = os.path.join(dest, "configs")
    os.makedirs(configs, exist_ok=True)
    for entry in os.listdir(stock):
        src, dst = os.path.join(stock, entry), os.path.join(configs, entry)
        if os.path.isdir(src) and entry.startswith("triton_"):
            os.makedirs(dst, exist_ok=True)
            for name in os.listdir(src):
                if not os.path.lexists(os.path.join(dst, name)):
                    os.symlink(os.path.join(src, name), os.path.join(dst, name))
        elif not os.path.lexists(dst):
            os.symlink(src, dst)
    for version in os.listdir(os.path.join(overlay, "configs")):
        folder = os.path.join(configs, version)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(os.path.join(overlay, "configs", version)):
            target = os.path.join(folder, name)
            if os.path.lexists(target):
                os.remove(target)  # a link to SGLang's own file: copying through it would overwrite that
            shutil.copyfile(os.path.join(overlay, "configs", version, name), target)
    return dest


MOE_CONFIGS_HELP = ("Triton fused-MoE kernel configs for every server: `sglang` (SGLang's own; bf16 "
                    "DeepSeek-V3 widths then run its untuned default), `shipped` (benchmarks/moe_configs, "
                    "from moe_tune.py, laid over SGLang's own) or another directory moe_tune.py wrote")


def moe_configs_env(choice: str) -> dict:
    """The environment that gives a server the MoE kernel configs `choice` names (MOE_CONFIGS_HELP)."""
    if choice == "sglang":
        return {}
    overlay = SHIPPED_MOE_CONFIGS if choice == "shipped" else choice
    dest = tempfile.mkdtemp(prefix="moe-configs-")
    atexit.register(shutil.rmtree, dest, True)  # the servers that read it stop before the client exits
    return {"SGLANG_MOE_CONFIG_DIR": moe_config_dir(overlay, dest)}


class Server:
    """`python -m sglang.launch_server ARGS` in its own process group, logging to a file."""

    def __init__(self, args: list[str], log_path: str, port: int = 30000, env: dict | None = None):
        self.args, self.log_path, self.port = args, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.proc = None

    def __enter__(self):
        ensure_port_free(self.port)
        # `timeout` and the device tool end a run with SIGTERM, which by default skips every
        # `with` block's exit and leaves the server (its own session) running: make it SystemExit.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        cmd = [sys.executable, "-m", "sglang.launch_server", *self.args, "--port", str(self.port),
               "--host", "127.0.0.1"]
        self.log = open(self.log_path, "w")
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 400) -> float:
        wait_http(self.url + "/get_model_info", self.proc, timeout, f"server (see {self.log_path})")
        return time.time() - self.started

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read().decode()

    def post(self, path: str, body: dict) -> str:
        return post_json(self.url + path, body)

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # stray children (schedulers) of a crashed launcher; only this server's session, since
        # other servers may share the machine (admission_ab --interleave, router_cluster)
        subprocess.run(["pkill", "-9", "-s", str(self.proc.pid), "-f", "sglang::"], check=False)
        self.log.close()


# ----------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    name: str
    input_len: int
    output_len: int
    input_ratio: float = 0.8  # InferenceX's --random-range-ratio
    output_ratio: float = 0.8
    vocab: int = 30000  # token ids drawn from [100, vocab)

    def requests(self, n: int, seed: int = 0) -> list[tuple[list[int], int]]:
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            n_in = rng.randint(int(self.input_len * self.input_ratio), self.input_len)
            n_out = rng.randint(int(self.output_len * self.output_ratio), self.output_len)
            out.append(([rng.randrange(100, self.vocab) for _ in range(n_in)], n_out))
        return out


WORKLOADS = {
    "short": Workload("short", 2400, 64, input_ratio=1 / 3, output_ratio=1.0),  # 800-2400 in, 64 out
    "1k1k": Workload("1k1k", 1024, 1024),
    "8k1k": Workload("8k1k", 8192, 1024),
}


# ----------------------------------------------------------------------------- client
@dataclass
class Record:
    input_len: int
    output_len: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list = field(default_factory=list)
    error: str = ""
    sent_at: float = 0.0  # perf_counter when the request was sent


async def _one(session, url, ids, max_new, record: Record):
    payload = {"input_ids": ids, "stream": True,
               "sampling_params": {"max_new_tokens": max_new, "temperature": 0.0, "ignore_eos": True}}
    start = time.perf_counter()
    record.sent_at = start
    last = start
    try:
        async with session.post(url + "/generate", json=payload) as resp:
            if resp.status != 200:
                record.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                data = json.loads(line[5:])
                n = data.get("meta_info", {}).get("completion_tokens", 0)
                if record.ttft == 0.0:
                    record.ttft = now - start
                elif n > record.output_len:
                    record.itl.append((now - last) / (n - record.output_len))
                record.output_len = max(record.output_len, n)
                last = now
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
        record.error = repr(exc)[:200]
    record.e2e = time.perf_counter() - start


async def run_load(url: str, reqs: list[tuple[list[int], int]], concurrency: int,
                   progress: str = "", request_rate: float | None = None,
                   seed: int = 0) -> tuple[list[Record], float]:
    """Closed loop by default: `concurrency` clients, each sends its next request when the last
    finishes. With `request_rate` (requests/s), open loop: requests leave at Poisson arrival
    times (exponential gaps drawn from `seed`) with at most `concurrency` in flight, later ones
    waiting in the client, as `sglang.bench_serving --request-rate R --max-concurrency C`; TTFT
    counts from the send, as there."""
    import aiohttp

    records = [Record(len(ids)) for ids, _ in reqs]
    done = [0]
    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def send(i):
            await _one(session, url, reqs[i][0], reqs[i][1], records[i])
            done[0] += 1
            if progress and done[0] % max(1, len(reqs) // 4) == 0:
                print(f"  {progress}: {done[0]}/{len(reqs)} done", flush=True)

        start = time.perf_counter()
        if request_rate is None:
            queue = list(range(len(reqs)))

            async def client():
                while queue:
                    await send(queue.pop(0))

            await asyncio.gather(*(client() for _ in range(concurrency)))
        else:
            slots = asyncio.Semaphore(concurrency)
            gaps = random.Random(seed)

            async def capped(i):
                async with slots:
                    await send(i)

            tasks = []
            for i in range(len(reqs)):
                if i:
                    await asyncio.sleep(gaps.expovariate(request_rate))
                tasks.append(asyncio.create_task(capped(i)))
            await asyncio.gather(*tasks)
        return records, time.perf_counter() - start


def load(url, reqs, concurrency, progress="", request_rate=None, seed=0):
    return asyncio.run(run_load(url, reqs, concurrency, progress, request_rate, seed))


_START = None  # a client process's start barrier (set by _init_client)


def _init_client(barrier) -> None:
    global _START
    _START = barrier


def _client_shard(job) -> tuple[list[Record], float, float, float]:
    """One client process's share: its records, its start and end (CLOCK_MONOTONIC, the same in
    every process), and the CPU seconds it used."""
    _START.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    records, _ = load(*job)
    return records, t0, time.perf_counter(), time.process_time() - cpu0


def load_measured(url, reqs, concurrency, progress="", request_rate=None, seed=0,
                  processes: int = 1) -> tuple[list[Record], float, float]:
    """`load` from `processes` client processes, each an event loop with its share of the
    clients (and of the Poisson rate), all starting together; records in request order. Also
    returns the CPU seconds the client processes used, to tell a client-bound run: one Python
    process parses every streamed token event of the load."""
    if processes == 1:
        cpu0 = time.process_time()
        records, secs = load(url, reqs, concurrency, progress, request_rate, seed)
        return records, secs, time.process_time() - cpu0
    if not 1 < processes <= concurrency:
        raise ValueError(f"client processes must be between 1 and the concurrency ({concurrency}), "
                         f"not {processes}")
    import multiprocessing

    shards = [list(range(p, len(reqs), processes)) for p in range(processes)]
    jobs = [(url, [reqs[i] for i in shard], concurrency // processes + (p < concurrency % processes),
             progress if p == 0 else "", None if request_rate is None else request_rate / processes,
             seed + p) for p, shard in enumerate(shards)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes, _init_client, (ctx.Barrier(processes),)) as pool:
        parts = pool.map(_client_shard, jobs, chunksize=1)
    records: list = [None] * len(reqs)
    for shard, (shard_records, *_rest) in zip(shards, parts):
        for i, record in zip(shard, shard_records):
            records[i] = record
    secs = max(p[2] for p in parts) - min(p[1] for p in parts)
    return records, secs, sum(p[3] for p in parts)


# ----------------------------------------------------------------------------- summary
def _pct(values, q):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summarize(records: list[Record], duration: float, n_gpus: int, concurrency: int,
              closed_loop: bool = True) -> dict:
    ok = [r for r in records if not r.error]
    itl = [x for r in ok for x in r.itl]
    tpot = [(r.e2e - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    in_tok = sum(r.input_len for r in ok)
    out_tok = sum(r.output_len for r in ok)
    ms = 1000.0
    out = {
        "completed": len(ok), "failed": len(records) - len(ok), "duration_s": round(duration, 3),
        "concurrency": concurrency, "n_gpus": n_gpus,
        "input_tok_s": round(in_tok / duration, 1), "output_tok_s": round(out_tok / duration, 1),
        "total_tok_s_per_gpu": round((in_tok + out_tok) / duration / n_gpus, 1),
        "output_tok_s_per_user": round(1.0 / statistics.mean(tpot), 2) if tpot else 0.0,
    }
    for name, vals in (("ttft", [r.ttft for r in ok]), ("tpot", tpot), ("itl", itl),
                       ("e2e", [r.e2e for r in ok])):
        out[f"mean_{name}_ms"] = round(statistics.mean(vals) * ms, 2) if vals else 0.0
        for q in (50, 90, 99):
            out[f"p{q}_{name}_ms"] = round(_pct(vals, q) * ms, 2)
    # the first wave and the drain are closed-loop effects; an open loop has no such window
    out["steady_input_tok_s"] = steady_input_rate(ok, concurrency) if closed_loop else 0.0
    if records and not ok:
        out["first_error"] = records[0].error
    return out


def steady_input_rate(records: list[Record], concurrency: int) -> float:
    """Input tok/s over the closed loop's steady part: from the end of the first wave (the
    `concurrency`-th completion) to the last send, counting requests sent in that window.
    The first wave arrives all at once and the tail drains with falling concurrency; both
    swing short runs. 0.0 when the run has no such window (fewer than 2 waves)."""
    if len(records) <= concurrency:
        return 0.0
    ends = sorted(r.sent_at + r.e2e for r in records)
    t0, t1 = ends[concurrency - 1], max(r.sent_at for r in records)
    inside = [r for r in records if t0 <= r.sent_at <= t1]
    if t1 <= t0 or len(inside) < 2:
        return 0.0
    return round(sum(r.input_len for r in inside) / (t1 - t0), 1)


def scrape(metrics_text: str, prefix: str = "sglang:atom_") -> dict:
    """The sglang-atom series of a Prometheus text page, summed over label sets per name+labels."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = out.get(key, 0.0) + float(value)
            except ValueError:
                continue
    return out


def machine() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() or "cpu"
    except OSError:
        return "cpu"


def provenance() -> dict:
    """What every result file carries: the command that wrote it, the machine and the date."""
    return {"command": "python3 " + " ".join(sys.argv),
            "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)

