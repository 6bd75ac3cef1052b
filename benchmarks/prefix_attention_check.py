"""DeepSeek's MHA over a cached prefix, planned by SGLang and by sglang-atom, on one GPU.

    python3 benchmarks/prefix_attention_check.py --out DIR [--model models/deepseek-v3-check]
        [--prompt-tokens 20000] [--chunk 8192]

TP1, flashinfer attention, a random-weight checkpoint (`random_checkpoint.py`). A prompt longer
than `--chunk` (SGLang's chunked-prefill size) runs as several passes, and from the second on its
new rows attend to the cached prefix through SGLang's MHA path (a prefix of at least
SGLANG_CHUNKED_PREFIX_CACHE_THRESHOLD, 8192 tokens): plain SGLang plans flashinfer for it from
offsets computed on the GPU, `--backend atom` from the batch's host lengths
(`sglang_atom/integration/prefix_attention.py`). Per server (plain, atom): a warm-up prompt, then
one prompt with greedy output and prompt logprobs (the two servers' answers compared: the same
kernels and plans should give identical numbers), then one more under SGLang's profiler, whose
trace gives per pass the host and GPU time, the device-to-host copies, and the host time spent
in `update_wrapper` and in flashinfer's `plan` (inclusive).
Writes DIR/prefix_attention_check.json (command, machine, date).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_checkpoint  # noqa: E402
import trace_summary  # noqa: E402
from serving import Server, model_config, provenance, record_json  # noqa: E402
from tbo_serving import _compare, generate, rank_traces  # noqa: E402

PLANNING = (": update_wrapper", ": plan")  # Python frames whose host time the trace reports


def planning_per_pass(events: list[dict]) -> list[dict]:
    """Per forward pass: its host and GPU time, how many device-to-host copies it ran, and the
    host time inside each planning function (outermost frames, so a call counts once)."""
    frames = [e for e in events if e.get("cat") == "python_function" and e["name"].endswith(PLANNING)]
    rows = []
    matched = trace_summary.pass_events(events)
    for (f, gpu, _), p in zip(matched, trace_summary.passes(events, matched=matched)):
        lo, hi = f["ts"], f["ts"] + f["dur"]
        inside = sorted((e for e in frames if lo <= e["ts"] <= hi), key=lambda e: e["ts"])
        host_ms: dict[str, float] = {}
        end = {}
        for e in inside:
            name = e["name"].split(": ")[-1]
            if e["ts"] >= end.get(name, float("-inf")):  # skip frames nested in the same function
                host_ms[name] = round(host_ms.get(name, 0) + e["dur"] / 1000, 3)
                end[name] = e["ts"] + e["dur"]
        rows.append({"host_ms": p["host_ms"], "gpu_span_ms": p.get("span_ms"),
                     "gpu_after_host_ms": p.get("gpu_after_host_ms"),
                     "dtoh_copies": sum("DtoH" in g["name"] for g in gpu),  # "Memcpy DtoH (...)"
                     "planning_host_ms": host_ms})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models/deepseek-v3-check")
    ap.add_argument("--prompt-tokens", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--start-timeout", type=float, default=400)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(args.model.rstrip("/"))
    ckpt = random_checkpoint.write(args.model, f"/tmp/ckpt/{name}")
    vocab = model_config(args.model)["vocab_size"]
    rng = random.Random(0)
    prompts = {k: [rng.randrange(3, vocab) for _ in range(args.prompt_tokens)]
               for k in ("warmup", "compare", "profile")}
    out = {**provenance(), "model": args.model, "prompt_tokens": args.prompt_tokens,
           "chunk": args.chunk, "servers": {}}
    answers = {}
    for backend in ("sglang", "atom"):
        flags = ["--model-path", ckpt, "--tp", "1", "--backend", backend,
                 "--attention-backend", "flashinfer", "--chunked-prefill-size", str(args.chunk),
                 "--skip-tokenizer-init", "--disable-cuda-graph", "--disable-radix-cache",
                 "--sampling-backend", "pytorch", "--grammar-backend", "none"]
        print(f"== {backend}: starting", flush=True)
        with Server(flags, os.path.join(args.out, f"server_{backend}.log")) as server:
            startup = server.wait_ready(args.start_timeout)
            generate(server.url, prompts["warmup"], 0, 1, False)
            answers[backend] = generate(server.url, prompts["compare"], 0, 8, True)
            trace_dir = os.path.abspath(os.path.join(args.out, f"trace_{backend}"))
            server.post("/start_profile", {"output_dir": trace_dir, "activities": ["CPU", "GPU"]})
            t0 = time.perf_counter()
            generate(server.url, prompts["profile"], 0, 1, False)
            profiled_s = time.perf_counter() - t0
            server.post("/stop_profile", {})
            deadline = time.time() + 120  # the scheduler exports its trace after stop
            while time.time() < deadline and not rank_traces(trace_dir):
                time.sleep(2)
            path = rank_traces(trace_dir).get(0)
            rows = planning_per_pass(trace_summary.read(path)) if path else None
            out["servers"][backend] = {"startup_s": round(startup, 1),
                                       "profiled_request_s": round(profiled_s, 4),
                                       "trace": path, "passes": rows}
            print(f"   {backend}: ready {startup:.0f} s; profiled request {profiled_s * 1000:.1f} ms",
                  flush=True)
            for i, r in enumerate(rows or []):
                print(f"   pass {i}: {r}", flush=True)
    out["atom_vs_sglang"] = _compare(answers["sglang"], answers["atom"])
    print("atom against plain SGLang:", {k: v for k, v in out["atom_vs_sglang"].items()
                                         if k != "output_ids"}, flush=True)
    record_json(os.path.join(args.out, "prefix_attention_check.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
