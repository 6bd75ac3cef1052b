"""Where GPU time goes in a PyTorch/SGLang chrome trace: per stream, per kernel kind, idle gaps.

    python3 benchmarks/trace_summary.py TRACE.json[.gz] [TRACE ...] [--out summary.json] [--timeline US]
        [--python N]

For each trace (torch.profiler's `export_chrome_trace`, or SGLang's `/start_profile` output):
the GPU span, and per CUDA stream the busy time of kernels and copies, split into kinds by
kernel name (attention, MoE, GEMM, NCCL, symmetric-memory barrier, copies, elementwise, other).
The compute stream (the one with the most kernel time) also gets its idle time inside the span
and its longest gaps with the name of the kernel that ended each: a stream waiting on a
collective shows up there. `--timeline US` also prints every kernel or copy of at least US
microseconds (and every NCCL kernel) in time order: start and length in ms, stream, name.
`--python N` lists the Python functions with the most inclusive and self time (traces recorded
with stacks), for passes where the GPU waits on the host. `--passes` summarizes each forward
pass on its own (SGLang traces recorded with stacks): the kernels launched while one
`ModelRunner.forward` ran, its host time (and how much of it the host spent blocked in
synchronizing calls and copies, waiting for the GPU), whether sglang-atom split it, how far the GPU's work
outlasted the host's return and how long the GPU waited before the pass. `--kernels KIND` adds
each pass's kernels of one kind by name (e.g. `gemm`, to see which GEMMs a split adds). A
profiled wave whose prompts landed in different scheduler passes shows up there as several
prefill passes.
Used for the two-batch-overlap notes (benchmarks/results/NOTES-tbo.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# First match wins; names as CUDA/Triton report them.
KINDS = (
    ("nccl", re.compile(r"nccl", re.I)),
    ("barrier", re.compile(r"symmetric_memory::barrier|barrier_kernel", re.I)),
    ("attention", re.compile(r"attn|attention|flash|fwd_kernel|extend|mla|decode_grouped", re.I)),
    ("moe", re.compile(r"fused_moe|moe|topk|align_block", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|sm90_xmma|cublas|matmul", re.I)),
    ("elementwise", re.compile(r"elementwise|reduce_kernel|norm|silu|act_and_mul|rotary|copy", re.I)),
)


def kind_of(event: dict) -> str:
    if event.get("cat") in ("gpu_memcpy", "gpu_memset"):
        return "copy"
    for kind, pattern in KINDS:
        if pattern.search(event.get("name", "")):
            return kind
    return "other"


def read(path: str) -> list[dict]:
    """Every complete event of a trace (GPU work, host launch calls, Python functions, ...): one
    parse of a file that can run to megabytes, for every summary below."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def gpu_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("cat") in GPU_CATEGORIES]


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def python_summary(events: list[dict], top: int = 15) -> dict:
    """Where the host's time goes: per Python function (the events with a Python id, which
    SGLang's profiler records with stacks), inclusive time (a recursive call counted once, at its
    outermost frame) and self time (minus its callees), in ms, top `top` of each.

    A split prefill pass that is host-bound shows here as the functions the GPU waited for.
    """
    by_id = {e["args"]["Python id"]: e for e in events if "Python id" in e.get("args", {})}
    child_us: dict = defaultdict(float)
    for e in by_id.values():
        child_us[e["args"].get("Python parent id")] += e["dur"]
    inclusive: dict[str, float] = defaultdict(float)
    own: dict[str, float] = defaultdict(float)
    for pid, e in by_id.items():
        name = _ADDRESS.sub("", e["name"])
        own[name] += max(0.0, e["dur"] - child_us.get(pid, 0.0))
        parent, nested = by_id.get(e["args"].get("Python parent id")), False
        while parent is not None:
            if _ADDRESS.sub("", parent["name"]) == name:
                nested = True
                break
            parent = by_id.get(parent["args"].get("Python parent id"))
        if not nested:
            inclusive[name] += e["dur"]

    def ranked(totals):
        return [{"function": n[:160], "ms": round(v / 1000, 3)}
                for n, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]

    return {"inclusive": ranked(inclusive), "self": ranked(own)}


# The host-side frame of one forward pass (SGLang 0.5.17: model_executor/model_runner.py) and
# the frame only a split (two-batch overlap) pass runs (sglang_atom/tbo/overlap.py).
_FORWARD = re.compile(r"model_executor/model_runner\.py\(\d+\): forward$")
_SPLIT = re.compile(r"sglang_atom/tbo/overlap\.py\(\d+\): run_interleaved$")
_LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
# Host calls that wait for the GPU: synchronizations, and copies, which block the host whenever
# their host side is pageable memory (`.item()`, `.tolist()`, `.to("cpu")`; HtoD copies of a
# few bytes take microseconds).
_BLOCKING = re.compile(r"^cuda(Stream|Device|Event)Synchronize$|^cudaMemcpy")


def pass_events(events: list[dict]) -> list[tuple[dict, list[dict], bool]]:
    """Each forward pass as (its host frame, the GPU work it launched, whether it was split),
    the GPU work matched to the host's launch calls by correlation id."""
    forwards = sorted((e for e in events if e["cat"] == "python_function" and _FORWARD.search(e["name"])),
                      key=lambda e: e["ts"])
    outermost, end = [], float("-inf")
    for e in forwards:  # a forward called inside another (a graph runner's) belongs to it
        if e["ts"] >= end:
            outermost.append(e)
            end = e["ts"] + e["dur"]
    launches = sorted((e["ts"], e["args"].get("correlation")) for e in events
                      if e["cat"] in _LAUNCH_CATEGORIES and "correlation" in e.get("args", {}))
    gpu_by_corr: dict = defaultdict(list)
    for e in events:
        if e["cat"] in GPU_CATEGORIES and "correlation" in e.get("args", {}):
            gpu_by_corr[e["args"]["correlation"]].append(e)
    splits = [e["ts"] for e in events if e["cat"] == "python_function" and _SPLIT.search(e["name"])]
    out = []
    for f in outermost:
        lo, hi = f["ts"], f["ts"] + f["dur"]
        gpu = [g for ts, corr in launches if lo <= ts <= hi for g in gpu_by_corr.get(corr, [])]
        out.append((f, gpu, any(lo <= t <= hi for t in splits)))
    return out


def passes(events: list[dict], kernels: str = "", matched: list | None = None) -> list[dict]:
    """One summary per forward pass: `summarize` of the GPU work it launched, its host time,
    whether it was split, and how the host and GPU lined up around it; with `kernels` (a kind),
    also that kind's kernels by name (`kernels_<kind>`, see `kernel_names`). `matched`: the
    result of `pass_events(events)`, for a caller that needs it too (matching is the costly part)."""
    out, prev_gpu_end = [], None
    blocking = [e for e in events if e["cat"] in _LAUNCH_CATEGORIES and _BLOCKING.search(e["name"])]
    for f, gpu, split in matched if matched is not None else pass_events(events):
        lo, hi = f["ts"], f["ts"] + f["dur"]
        # The host's time in the pass includes its waits for the GPU (SGLang's attention
        # backends sync while planning: at a pass's start that is a wait for the previous
        # pass's kernels), so host time alone overstates the launch work.
        blocked = sum(b["dur"] for b in blocking
                      if b.get("tid") == f.get("tid") and lo <= b["ts"] and b["ts"] + b["dur"] <= hi)
        p = {"host_ms": round(f["dur"] / 1000, 3), "host_blocked_ms": round(blocked / 1000, 3),
             "split": split, "kernels": len(gpu), **summarize(gpu, top_gaps=3)}
        if kernels:
            p["kernels_" + kernels] = kernel_names(gpu, kernels)
        if gpu:
            start, end = min(g["ts"] for g in gpu), max(g["ts"] + g["dur"] for g in gpu)
            # How far the host ran ahead: the GPU's work outlasts the host's return by this much.
            # Near 0 or below, the pass is host-bound and the scheduler's work between passes
            # leaves the GPU idle.
            p["gpu_after_host_ms"] = round((end - f["ts"] - f["dur"]) / 1000, 3)
            # The GPU's wait between the previous pass's last kernel and this pass's first.
            p["gpu_wait_before_ms"] = None if prev_gpu_end is None else round((start - prev_gpu_end) / 1000, 3)
            prev_gpu_end = end
        out.append(p)
    return out


def kernel_names(gpu: list[dict], kind: str, top: int = 8) -> list[dict]:
    """The kernels of one kind by total time: name, calls, mean µs, total ms (e.g. to see
    which GEMMs a split pass adds)."""
    totals: dict = defaultdict(lambda: [0, 0.0])
    for g in gpu:
        if kind_of(g) == kind:
            t = totals[g["name"][:100]]
            t[0] += 1
            t[1] += g["dur"]
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"name": n, "calls": c, "mean_us": round(d / c, 1), "total_ms": round(d / 1000, 3)}
            for n, (c, d) in rows]


def summarize(events: list[dict], top_gaps: int = 5, min_gap_us: float = 20.0) -> dict:
    """Times in ms from the GPU events of one device (dicts with ts, dur in µs, cat, name, args.stream)."""
    if not events:
        return {"span_ms": 0.0, "streams": {}, "compute_stream": None}
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e["dur"] for e in events)
    streams: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    by_stream: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        stream = str(e.get("args", {}).get("stream", "?"))
        streams[stream][kind_of(e)] += e["dur"] / 1000
        by_stream[stream].append(e)
    kernel_ms = {s: sum(v for k, v in kinds.items() if k != "copy") for s, kinds in streams.items()}
    compute = max(kernel_ms, key=kernel_ms.get)
    ordered = sorted(by_stream[compute], key=lambda e: e["ts"])
    gaps, busy_until = [], ordered[0]["ts"]
    last_name = ordered[0]["name"]
    for e in ordered:
        gap = e["ts"] - busy_until
        if gap > min_gap_us:
            gaps.append({"at_ms": round((busy_until - start) / 1000, 3), "gap_ms": round(gap / 1000, 3),
                         "after": last_name[:80]})
        if e["ts"] + e["dur"] >= busy_until:
            busy_until, last_name = e["ts"] + e["dur"], e["name"]
    return {
        "span_ms": round((end - start) / 1000, 3),
        "compute_stream": compute,
        "compute_idle_ms": round(sum(g["gap_ms"] for g in gaps), 3),
        "compute_longest_gaps": sorted(gaps, key=lambda g: -g["gap_ms"])[:top_gaps],
        "streams": {s: {k: round(v, 3) for k, v in sorted(kinds.items())} | {"total": round(sum(kinds.values()), 3)}
                    for s, kinds in sorted(streams.items(), key=lambda kv: -sum(kv[1].values()))},
    }


def pass_line(index: int, p: dict) -> str:
    """One forward pass on one line: host and GPU time, compute-stream work by kind, idle."""
    compute = p["streams"].get(p["compute_stream"], {})
    kinds = ", ".join(f"{k} {v}" for k, v in compute.items() if k != "total")
    line = (f"  pass {index}{' (split)' if p['split'] else ''}: host {p['host_ms']} ms "
            f"({p['host_blocked_ms']} waiting on the GPU), GPU span "
            f"{p['span_ms']} ms, {p['kernels']} kernels; compute stream {kinds}; idle "
            f"{p.get('compute_idle_ms', 0)} ms")
    if "gpu_after_host_ms" in p:
        line += f"; GPU ends {p['gpu_after_host_ms']} ms after the host"
    if p.get("gpu_wait_before_ms") is not None:
        line += f", waited {p['gpu_wait_before_ms']} ms before it"
    return line


def timeline(events: list[dict], min_us: float) -> list[str]:
    """One line per kernel/copy of at least `min_us` µs, or any NCCL kernel, in time order."""
    events = sorted(events, key=lambda e: e["ts"])
    start = events[0]["ts"] if events else 0
    return [f"{(e['ts'] - start) / 1000:9.2f} {e['dur'] / 1000:7.2f} s{e.get('args', {}).get('stream', '?')} "
            f"{e['name'][:80]}" for e in events if e["dur"] >= min_us or kind_of(e) == "nccl"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--out", default="")
    ap.add_argument("--timeline", type=float, default=0, help="also list kernels of at least this many µs")
    ap.add_argument("--python", type=int, default=0,
                    help="also list the N Python functions with the most inclusive and self time")
    ap.add_argument("--passes", action="store_true", help="also summarize each forward pass")
    ap.add_argument("--kernels", default="", help="--passes, and list each pass's kernels of this "
                    "kind (gemm, moe, attention, ...) by name")
    args = ap.parse_args()
    results = {}
    for path in args.traces:
        everything = read(path)
        events = gpu_events(everything)
        s = results[path] = summarize(events)
        if args.python:
            s["python"] = python_summary(everything, args.python)
            for kind in ("inclusive", "self"):
                print(f"== {path}: Python functions by {kind} time (ms)")
                print("\n".join(f"  {row['ms']:9.3f} {row['function']}" for row in s["python"][kind]))
        if args.passes or args.kernels:
            s["passes"] = passes(everything, args.kernels)
            print(f"== {path}: forward passes")
            for i, p in enumerate(s["passes"]):
                print(pass_line(i, p))
                for row in p.get("kernels_" + args.kernels, []):
                    print(f"    {row['calls']:4d} x {row['mean_us']:9.1f} us = {row['total_ms']:8.3f} ms  "
                          f"{row['name']}")
        if args.timeline:
            print(f"== {path}: kernels of at least {args.timeline:g} us (start ms, length ms, stream, name)")
            print("\n".join(timeline(events, args.timeline)))
        print(f"== {path}\nspan {s['span_ms']} ms; compute stream {s['compute_stream']} idle "
              f"{s.get('compute_idle_ms', 0)} ms")
        for stream, kinds in s["streams"].items():
            parts = ", ".join(f"{k} {v}" for k, v in kinds.items() if k != "total")
            print(f"  stream {stream}: {kinds['total']} ms busy ({parts})")
        for g in s.get("compute_longest_gaps", []):
            print(f"  gap {g['gap_ms']} ms at {g['at_ms']} ms after {g['after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python3 " + " ".join(sys.argv), "traces": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
