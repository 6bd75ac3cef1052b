"""Two-batch overlap and --atom-dp-gatherv on real servers: correctness against the same server
without them, and prefill speed.

    python3 benchmarks/tbo_serving.py check --out DIR --models models/qwen3-moe-check,models/deepseek-v3-check
    python3 benchmarks/tbo_serving.py perf --out DIR --models models/qwen3-235b-width,models/deepseek-v3-width \
        --tokens 4096,8192,16384 [--weights fp8] [--layers 8]

Each model is served twice with `--backend atom --tp N --dp N --enable-dp-attention
--atom-admission off`: once plain, once with `--enable-two-batch-overlap`. Admission is off so
both servers see the same batches. `--gatherv` adds `--atom-dp-gatherv 1` to the compared
servers, and `--tbo-comm none` leaves TBO off there:

    python3 benchmarks/tbo_serving.py check --out DIR --models models/qwen3-moe-check --dp 2 \
        --gatherv --tbo-comm none

checks the gatherv transport alone against the plain server (at DP2 the same rows summed in the
same order: answers should be identical, not only within the noise floor).

`--world1 --dp 1` runs any mode on one GPU: the servers load the benchmark-only rig
benchmarks/world1/sitecustomize.py, under which SGLang keeps DP attention at one rank, so the
TBO server splits its passes and every collective moves nothing. That measures the split's own
cost and checks its answers, not the overlap.

check: random N(0, 0.02) weights (benchmarks/random_checkpoint.py; dummy weights would not
    show a mix-up), decode CUDA graphs on, small chunked prefill. Wave 1 sends prompts of mixed
    lengths to every rank, some longer than the per-rank chunk; wave 2 sends one long prompt to
    the last rank only, so the others are idle. Greedy, 8 output tokens, prompt logprobs. Both
    servers' answers are compared: output tokens equal, max |delta| of prompt logprobs. The
    noise floor is the plain server against itself with the same prompts sent one at a time
    (other batches, so other kernel tiles; SGLang recomputes a cached prefix when prompt
    logprobs are asked from token 0). The wrong-prefix control is the plain server's wave-2
    prompt against itself with its first half replaced: the second half's logprob deltas show
    how large the error TBO could make (a cut half attending to the wrong KV) is with these
    near-flat random weights; TBO's deltas must sit far below them. The TBO server's split
    counter must show that prefill ran split.
perf: dummy weights; per repeat, --prompts-per-rank fresh prompts of T tokens on every rank,
    1 output token, all sent together, with a prefill budget of T tokens per rank and pass; the
    time to the last answer over the prompts is the prefill time, reported per T tokens per rank
    (one pass's worth). Several prompts per rank because the ranks' first prompts can arrive in
    different scheduler passes (seen on 2xH200: a wave of one prompt per rank ran as two
    one-rank passes on the plain server and one two-rank pass on the TBO server); with K per
    rank that skew costs at most one pass of K+1. Each wave's prefill passes are counted from
    sglang-atom's per-pass metric, and the median over waves of exactly K passes (no skew) is
    reported beside the median over all. Speedup = off / on.
profile: as perf (--prompts-per-rank prompts on every rank per wave, so most of the profiled
    wave's passes are two-rank passes), for the first of --tokens, then one more wave under
    SGLang's profiler (`/start_profile`, CPU and GPU activity); writes each server's traces to
    DIR/trace_LABEL/ and the TP-0 trace's summary (benchmarks/trace_summary.py: GPU time per
    stream and kernel kind, the compute stream's idle gaps, host time per Python function, and
    the same per forward pass), and every other rank's host and GPU time per pass (the slowest
    rank's host sets a pass's pace), into DIR/tbo_profile.json.

Writes DIR/tbo_{check,perf,profile}.json (command, machine, date, numbers) and logs.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_checkpoint  # noqa: E402
import trace_summary  # noqa: E402
from model_prefill import write_model_dir  # noqa: E402
from serve_smoke import BASE_FLAGS  # noqa: E402
from serving import (  # noqa: E402
    MOE_CONFIGS_HELP, Server, model_config, moe_configs_env, post_json, provenance, record_json, scrape)
from sglang_atom.validation import MLA_ARCHITECTURES  # noqa: E402

SPLIT = re.compile(r'sglang:atom_tbo_prefill_passes_total\{split="(yes|no)"\} ([0-9.e+]+)')


def generate(url: str, ids: list[int], rank: int, max_new: int, logprobs: bool) -> dict:
    # SGLang 0.5.17 routes by `routed_dp_rank`; its /generate silently drops the older
    # `data_parallel_rank`, which then leaves the rank to the DP controller's round robin.
    body = {"input_ids": ids, "routed_dp_rank": rank,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}}
    if logprobs:
        # top 2 per output position: a greedy token that differs is judged by the margin there
        body.update(return_logprob=True, logprob_start_len=0, top_logprobs_num=2)
    return json.loads(post_json(url + "/generate", body))


def wave(url: str, prompts: list[tuple[int, list[int]]], max_new: int, logprobs: bool) -> list[dict]:
    """Send (rank, ids) prompts at once; answers in prompt order."""
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(generate, url, ids, rank, max_new, logprobs) for rank, ids in prompts]
        return [f.result() for f in futures]


def extend_passes(metrics_text: str) -> float:
    """Prefill passes so far: sglang-atom observes every pass's gathered rows (admission off
    too), on TP rank 0 only, so the count is one per pass (summed over any further labels)."""
    return sum(v for k, v in scrape(metrics_text).items()
               if k.startswith("sglang:atom_gathered_rows_padding_ratio_count{") and 'pass="extend"' in k)


def aligned_median(times: list[float], passes: list[float], per_rank: int) -> float | None:
    """Median over the waves that ran as `per_rank` passes (every pass held one prompt on every
    rank); None if none did. A wave whose prompts reached the ranks in different passes runs more
    passes, some with idle ranks, and measures that pass shape, not the prefill."""
    aligned = [t for t, n in zip(times, passes) if n == per_rank]
    return statistics.median(aligned) if aligned else None


def splits(server: Server) -> dict:
    return {m.group(1): float(m.group(2)) for m in SPLIT.finditer(server.get("/metrics"))}


SERVER_EXTRA: list[str] = []  # --server-args, appended to every server's flags


def attention_flags(model: str) -> list[str]:
    """DeepSeek's MLA runs flashinfer attention: under triton a split prompt's second half runs
    absorbed MLA, and `--backend atom` refuses TBO there (both servers get the same backend)."""
    architectures = model_config(model).get("architectures", [])
    return ["--attention-backend", "flashinfer"] if set(architectures) & set(MLA_ARCHITECTURES) else []


def variants(args, with_plain: bool = True) -> list[tuple[str, str | None, bool]]:
    """The servers to compare, as (label, TBO transport or None, --atom-dp-gatherv): the plain
    server first, then one per `--tbo-comm` value ('none': without TBO), each with
    `--atom-dp-gatherv 1` if --gatherv."""
    out = [("plain", None, False)] if with_plain else []
    for comm in args.tbo_comm.split(","):
        tbo_comm = None if comm == "none" else comm
        label = "+".join([*([f"tbo-{comm}"] if tbo_comm else []), *(["gatherv"] if args.gatherv else [])])
        if not label:
            raise ValueError("--tbo-comm none compares the plain server with itself; add --gatherv")
        out.append((label, tbo_comm, args.gatherv))
    return out


def server_flags(model: str, dp: int, tbo_comm: str | None, extra: list[str],
                 gatherv: bool = False) -> list[str]:
    """`tbo_comm` None: without TBO; else with TBO over that `--atom-tbo-comm` transport.
    `gatherv`: with `--atom-dp-gatherv 1`."""
    flags = ["--model-path", model, "--tp", str(dp), "--dp", str(dp), "--enable-dp-attention",
             "--backend", "atom", "--atom-admission", "off", "--enable-metrics", *extra,
             *attention_flags(model), *SERVER_EXTRA]
    if tbo_comm:
        flags += ["--enable-two-batch-overlap", "--atom-tbo-comm", tbo_comm]
    if gatherv:
        flags += ["--atom-dp-gatherv", "1"]
    return flags


@contextlib.contextmanager
def serving(args, out: dict, model_name: str, variant: str, flags: list[str]):
    """One server of a with/without set; records its start-up time and split prefill passes."""
    label = f"{model_name}-{variant}"
    print(f"== {label}: starting", flush=True)
    with Server(flags, os.path.join(args.out, f"server_{label}.log"), env=args.server_env) as server:
        startup = server.wait_ready(args.start_timeout)
        before = splits(server)
        yield server, label
        after = splits(server)
        print(f"   {label}: ready {startup:.0f} s; split passes {after}", flush=True)
        out.setdefault("servers", {})[label] = {
            "startup_s": round(startup, 1),
            "prefill_passes": {k: after.get(k, 0) - before.get(k, 0) for k in ("yes", "no")}}


def check(args, out: dict) -> None:
    rng = random.Random(0)
    dp = args.dp
    for model in args.models.split(","):
        name = os.path.basename(model.rstrip("/"))
        vocab = model_config(model)["vocab_size"]
        ckpt = random_checkpoint.write(model, f"/tmp/ckpt/{name}")
        chunk = 1024  # per rank
        lens1 = [[300, 700, 1500], [2600], [90, 1100]][:dp] + [[400]] * max(0, dp - 3)
        wave1 = [(r, [rng.randrange(3, vocab) for _ in range(n)]) for r in range(dp) for n in lens1[r]]
        wave2 = [(dp - 1, [rng.randrange(3, vocab) for _ in range(3000)])]
        control, half = replaced_prefix(rng, wave2[0], vocab)
        answers = {}
        servers = variants(args)[:2]  # the plain server and the first compared one
        compared = servers[1][0]
        out["compared"] = compared  # the server whose answers are checked against the plain one
        for tbo, (variant, tbo_comm, gatherv) in zip((False, True), servers):
            flags = server_flags(ckpt, dp, tbo_comm, [
                *[f for f in BASE_FLAGS if f not in ("--load-format", "dummy", "--disable-cuda-graph")],
                "--cuda-graph-max-bs", "16", "--chunked-prefill-size", str(chunk * dp),
                "--atom-prefill-tokens-per-rank", str(chunk),
                # a tiny model leaves a huge KV pool; SGLang's decode buffers scale with the
                # request slots it implies and ran out of memory for DeepSeek-V3-tiny
                "--max-running-requests", "64", "--mem-fraction-static", "0.7",
                "--atom-tbo-min-tokens", "256"], gatherv)
            with serving(args, out, name, variant, flags) as (server, _):
                answers[tbo] = wave(server.url, wave1, 8, True) + wave(server.url, wave2, 8, True)
                if not tbo:
                    answers["serial"] = [wave(server.url, [p], 8, True)[0] for p in wave1 + wave2]
                    answers["control"] = wave(server.url, [control], 8, True)[0]
        rows = []
        for i, (rank, ids) in enumerate(wave1 + wave2):
            ref = answers[False][i]
            rows.append({"rank": rank, "prompt_len": len(ids),
                         "logprob_mean": round(statistics.fmean(_logprobs(ref)), 4),
                         "compared": _compare(ref, answers[True][i]),
                         "noise_floor": _compare(ref, answers["serial"][i])})
            print(f"   rank {rank} len {len(ids)}: {compared} {rows[-1]['compared']}, "
                  f"floor {rows[-1]['noise_floor']}",
                  flush=True)
        out.setdefault("models", {})[name] = rows
        # What an error of the kind TBO could make looks like with these weights: the cut half
        # attending to the wrong prefix. TBO's deltas must sit far below it to mean anything.
        wrong = _logprob_diffs(answers[False][len(wave1)], answers["control"], start=half)
        worst, wrong_mean = max(r["compared"]["logprob_mean_abs_diff"] for r in rows), statistics.fmean(wrong)
        sensitivity = {"prompt_len": len(wave2[0][1]), "replaced_prefix_tokens": half,
                       "logprob_max_abs_diff": round(max(wrong), 5),
                       "logprob_mean_abs_diff": round(wrong_mean, 6),
                       # None: the model ignored its context, so this check could not see the error
                       "compared_worst_mean_over_this_mean": round(worst / wrong_mean, 4) if wrong_mean else None}
        out.setdefault("wrong_prefix_control", {})[name] = sensitivity
        print(f"   wrong-prefix control: {sensitivity}", flush=True)
        record_json(os.path.join(args.out, "tbo_check.json"), out)


def replaced_prefix(rng: random.Random, prompt: tuple[int, list[int]],
                    vocab: int) -> tuple[tuple[int, list[int]], int]:
    """The prompt with its first half replaced by other random ids, and that half's length: the
    context a cut sequence's second half would see if it attended to the wrong KV."""
    rank, ids = prompt
    half = len(ids) // 2
    return (rank, [rng.randrange(3, vocab) for _ in range(half)] + ids[half:]), half


def _logprobs(answer: dict, start: int = 0) -> list[float]:
    """Prompt logprobs of positions `start` onwards (position 0 has none)."""
    return [x[0] for x in answer["meta_info"]["input_token_logprobs"][start:] if x[0] is not None]


def _logprob_diffs(a: dict, b: dict, start: int = 0) -> list[float]:
    return [abs(x - y) for x, y in zip(_logprobs(a, start), _logprobs(b, start))]


def _compare(a: dict, b: dict) -> dict:
    """b against the reference a. Where the greedy tokens first differ, `first_diff_margin` is a's
    top-1 minus top-2 logprob there: a flip with a margin below the prompt logprobs' max delta is
    a near-tie that bf16 noise of that size can turn (random weights give nearly flat logits),
    not a mix-up of rows."""
    diffs = _logprob_diffs(a, b)
    out = {"same_output_ids": a["output_ids"] == b["output_ids"],
           "output_ids": [a["output_ids"], b["output_ids"]],
           "logprob_max_abs_diff": round(max(diffs), 5),
           "logprob_mean_abs_diff": round(statistics.fmean(diffs), 6)}
    first = next((i for i, (x, y) in enumerate(zip(a["output_ids"], b["output_ids"])) if x != y), None)
    top = a["meta_info"].get("output_top_logprobs")
    if first is not None and top:
        best, second = sorted((t[0] for t in top[first]), reverse=True)[:2]
        out["first_diff_position"] = first
        out["first_diff_margin"] = round(best - second, 5)
        out["flip_within_noise"] = best - second <= out["logprob_max_abs_diff"]
    return out


def prefill_servers(args, out: dict, model: str, tokens_per_rank: int):
    """The plain server, then one per `variants`, each in turn: yields (model name, variant,
    server, label) with dummy weights and a prefill budget of `tokens_per_rank` on every rank."""
    name = os.path.basename(model.rstrip("/"))
    for variant, tbo_comm, gatherv in variants(args, with_plain=not args.skip_plain):
        flags = prefill_flags(args, model, tokens_per_rank, tbo_comm, gatherv)
        with serving(args, out, name, variant, flags) as (server, label):
            yield name, (variant, tbo_comm, gatherv), server, label


def prefill_flags(args, model: str, tokens_per_rank: int, tbo_comm: str | None,
                  gatherv: bool = False) -> list[str]:
    """A prefill server's flags: with TBO over `tbo_comm`, or without it (None); with
    `--atom-dp-gatherv 1` if `gatherv`."""
    budget = str(tokens_per_rank * args.dp)
    # TBO servers split every pass measured here: these modes measure the split itself, and
    # the size a model splits from by default (`--atom-tbo-min-tokens 0`) would leave some
    # sizes unsplit. `--server-args "--atom-tbo-min-tokens 0"` measures the default instead.
    split_all = ["--atom-tbo-min-tokens", "256"] if tbo_comm else []
    # --cuda-graph: SGLang's defaults, under which the plain server runs prefill passes up to
    # its chunk size in breakable CUDA graphs (non-MLA models), as a user's server would,
    # and the TBO server's split passes run eagerly. Without it both run eagerly.
    base = [f for f in BASE_FLAGS if not (args.cuda_graph and f == "--disable-cuda-graph")]
    # one prompt per rank and pass, as plain SGLang would chunk with --chunked-prefill-size
    # T x dp (sized for memory the same way)
    return server_flags(model, args.dp, tbo_comm, [
        *base, "--chunked-prefill-size", budget, "--max-prefill-tokens", budget,
        "--atom-prefill-tokens-per-rank", str(tokens_per_rank), *split_all], gatherv)


def fresh_prompts(rng: random.Random, dp: int, tokens: int,
                  per_rank: int = 1) -> list[tuple[int, list[int]]]:
    """`per_rank` prompts of `tokens` random ids on every rank (fresh ids: no radix-cache hits)."""
    return [(r, [rng.randrange(3, 30000) for _ in range(tokens)])
            for _ in range(per_rank) for r in range(dp)]


def perf(args, out: dict) -> None:
    dp = args.dp
    tokens = [int(t) for t in args.tokens.split(",")]
    for model in args.models.split(","):
        for name, (variant, tbo_comm, gatherv), server, label in prefill_servers(args, out, model,
                                                                                 max(tokens)):
            rng = random.Random(1)
            rows = out.setdefault("runs", [])
            k = args.prompts_per_rank
            for t in tokens:
                times, passes = [], []
                # Warm-up waves are excluded: the first compiles kernels, and arrival jitter can
                # give a wave a batch shape (one rank alone) that compiles another.
                for rep in range(args.warmup + args.repeats):
                    prompts = fresh_prompts(rng, dp, t, k)
                    timed = rep >= args.warmup
                    before = extend_passes(server.get("/metrics")) if timed else 0.0
                    t0 = time.perf_counter()
                    wave(server.url, prompts, 1, False)
                    if timed:
                        times.append((time.perf_counter() - t0) / k)
                        passes.append(extend_passes(server.get("/metrics")) - before)
                med = statistics.median(times)
                aligned = aligned_median(times, passes, k)
                rows.append({"model": name, "variant": variant, "tbo": bool(tbo_comm),
                             "tbo_comm": tbo_comm, "dp_gatherv": gatherv,
                             "tokens_per_rank": t, "prompts_per_rank": k, "times_per_prompt_s": times,
                             "passes_per_wave": passes,
                             "median_s": round(med, 4), "min_s": round(min(times), 4),
                             "aligned_median_s": None if aligned is None else round(aligned, 4),
                             "prefill_tok_s": round(t * dp / med)})
                # the minimum beside the median: one stalled wave moved a 3-wave median by 30%
                print(f"   {label} {t} tok/rank x {k}: median {med * 1000:.1f} ms per pass-worth "
                      f"(min {min(times) * 1000:.1f}; waves of {k} passes: "
                      f"{'none' if aligned is None else f'{aligned * 1000:.1f}'}; passes {passes}), "
                      f"{t * dp / med:.0f} tok/s", flush=True)
                record_json(os.path.join(args.out, "tbo_perf.json"), out)
    speedups = {}
    for r in out.get("runs", []):
        if r["variant"] != "plain":
            base = next((x for x in out["runs"] if x["model"] == r["model"] and x["variant"] == "plain"
                         and x["tokens_per_rank"] == r["tokens_per_rank"]), None)
            if base:
                key = f"{r['model']}@{r['tokens_per_rank']}@{r['variant']}"
                speedups[key] = {"median": round(base["median_s"] / r["median_s"], 3),
                                 "min": round(base["min_s"] / r["min_s"], 3)}
                if base.get("aligned_median_s") and r.get("aligned_median_s"):
                    # both over waves of one pass shape: arrival skew taken out
                    speedups[key]["aligned_median"] = round(base["aligned_median_s"] / r["aligned_median_s"], 3)
    out["speedup_off_over_on"] = speedups
    print("speedups", speedups, flush=True)


def profile(args, out: dict) -> None:
    dp, t, k = args.dp, int(args.tokens.split(",")[0]), args.prompts_per_rank
    for model in args.models.split(","):
        for _, _, server, label in prefill_servers(args, out, model, t):
            rng = random.Random(1)
            warmup_s = []
            for _ in range(args.warmup):
                t0 = time.perf_counter()
                wave(server.url, fresh_prompts(rng, dp, t, k), 1, False)
                warmup_s.append(round(time.perf_counter() - t0, 4))
            trace_dir = os.path.abspath(os.path.join(args.out, f"trace_{label}"))
            server.post("/start_profile", {"output_dir": trace_dir, "activities": ["CPU", "GPU"]})
            t0 = time.perf_counter()
            wave(server.url, fresh_prompts(rng, dp, t, k), 1, False)
            wave_s = time.perf_counter() - t0
            server.post("/stop_profile", {})
            deadline = time.time() + 120  # the ranks export their traces after stop
            while time.time() < deadline and len(rank_traces(trace_dir)) < dp:
                time.sleep(2)
            traces = rank_traces(trace_dir)
            path = traces.get(0)
            events = trace_summary.read(path) if path else None
            out.setdefault("profiles", {})[label] = {
                "tokens_per_rank": t, "prompts_per_rank": k, "warmup_wave_s": warmup_s,
                "wave_s": round(wave_s, 4), "trace": path,
                "summary": trace_summary.summarize(trace_summary.gpu_events(events)) if path else None,
                # host time per Python function: a split pass of a small model waits on the host
                "python": trace_summary.python_summary(events, 25) if path else None,
                # a wave's prompts can land in different scheduler passes; each pass on its own says so
                "passes": trace_summary.passes(events) if path else None,
                # every rank joins every collective, so the slowest rank's host sets the pace of a
                # pass (2xH200, twentieth session: rank 1's host ran 1.3-1.5x rank 0's)
                "passes_by_rank": {r: [_pass_timing(p) for p in trace_summary.passes(trace_summary.read(f))]
                                   for r, f in sorted(traces.items()) if r != 0}}
            print(f"   {label}: profiled wave {wave_s * 1000:.1f} ms, trace {path}", flush=True)
            for i, p in enumerate(out["profiles"][label]["passes"] or []):
                print(f"   {trace_summary.pass_line(i, p)}", flush=True)
            for r, rows in out["profiles"][label]["passes_by_rank"].items():
                print(f"   rank {r}: " + "; ".join(
                    f"pass {i}{' (split)' if p['split'] else ''} host {p['host_ms']} / GPU {p['span_ms']} ms"
                    for i, p in enumerate(rows)), flush=True)
            record_json(os.path.join(args.out, "tbo_profile.json"), out)


def rank_traces(trace_dir: str) -> dict[int, str]:
    """The trace each TP rank exported into `trace_dir` (SGLang names them `<time>-TP-<rank>-...`)."""
    if not os.path.isdir(trace_dir):
        return {}
    found = {}
    for name in sorted(os.listdir(trace_dir)):
        match = re.search(r"-TP-(\d+)[-.]", name)
        if match and name.endswith(".trace.json.gz"):
            found.setdefault(int(match.group(1)), os.path.join(trace_dir, name))
    return found


def _pass_timing(p: dict) -> dict:
    """The host and GPU timing of one pass, without its per-stream breakdown."""
    keys = ("split", "host_ms", "span_ms", "compute_idle_ms", "gpu_after_host_ms", "gpu_wait_before_ms")
    return {key: p[key] for key in keys if key in p}


def world1_env() -> dict:
    """The servers' environment with the one-rank rig first on PYTHONPATH (every process SGLang
    spawns inherits it and imports the rig's sitecustomize at start)."""
    rig = os.path.join(os.path.dirname(os.path.abspath(__file__)), "world1")
    return {"PYTHONPATH": os.pathsep.join(p for p in (rig, os.environ.get("PYTHONPATH")) if p)}


def model_copies(models: str, weights: str, layers: int | None = None) -> str:
    """Each model of the comma list as a config in a temporary folder named MODEL[-fp8][-<N>l]:
    an FP8 block checkpoint for 'fp8', with `layers` decoder layers if given
    (`model_prefill.write_model_dir`; the servers load dummy weights)."""
    root = tempfile.mkdtemp(prefix="tbo-models-")
    atexit.register(shutil.rmtree, root, True)  # the servers reading it stop before the script exits
    suffix = ("-fp8" if weights == "fp8" else "") + (f"-{layers}l" if layers else "")
    return ",".join(write_model_dir(m, weights, os.path.join(root, os.path.basename(m.rstrip("/")) + suffix),
                                    layers)
                    for m in models.split(","))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("check", "perf", "profile"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--dp", type=int, default=4)
    ap.add_argument("--tokens", default="4096,8192,16384")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts-per-rank", type=int, default=4,
                    help="perf/profile: prompts of --tokens on every rank per wave (see above)")
    ap.add_argument("--tbo-comm", default="nccl",
                    help="--atom-tbo-comm of the TBO servers; perf runs one TBO server per listed value, "
                         "check the first; 'none': that server without TBO (with --gatherv)")
    ap.add_argument("--gatherv", action="store_true",
                    help="the servers compared with the plain one also run --atom-dp-gatherv 1 "
                         "(with --tbo-comm none: gatherv alone against the plain server)")
    ap.add_argument("--skip-plain", action="store_true",
                    help="perf/profile: only the TBO servers (the plain number from an earlier run)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="perf/profile: keep SGLang's CUDA graphs on (plain prefill then runs in its "
                         "breakable prefill graphs, split passes eagerly); default: both servers eager")
    ap.add_argument("--start-timeout", type=float, default=400)
    ap.add_argument("--server-args", default="",
                    help="more flags for every server, e.g. '--watchdog-timeout 60' so a hang dumps stacks")
    ap.add_argument("--moe-configs", default="sglang", help=MOE_CONFIGS_HELP)
    ap.add_argument("--world1", action="store_true",
                    help="with --dp 1: serve DP attention at one rank through the benchmark rig "
                         "benchmarks/world1/sitecustomize.py (SGLang refuses it otherwise), so one GPU "
                         "runs the split with collectives that move nothing: the split's own cost")
    ap.add_argument("--weights", choices=("bf16", "fp8"), default="bf16",
                    help="perf/profile: fp8 serves each model as an FP8 block checkpoint (DeepSeek-V3's "
                         "quantization_config added to a copy of its config, named MODEL-fp8)")
    ap.add_argument("--layers", type=int, default=None,
                    help="perf/profile: serve each model with this many decoder layers (a copy of its "
                         "config named MODEL-<N>l). The fixed part of a forward (embedding, DeepSeek's "
                         "dense first layer, the first all_gather and last reduce_scatter, which nothing "
                         "hides) weighs on a 4-layer model as it does not on a real one")
    args = ap.parse_args()
    if args.mode == "check" and (args.weights == "fp8" or args.layers):
        ap.error("check loads bf16 random checkpoints of the given configs (random_checkpoint.py): use "
                 "--weights fp8 and --layers with perf or profile")
    if args.weights == "fp8" or args.layers:
        args.models = model_copies(args.models, args.weights, args.layers)
    if args.world1 != (args.dp == 1):
        ap.error("--world1 and --dp 1 go together: SGLang runs DP attention at one rank only through "
                 "the rig (--world1), and the rig is for one rank")
    SERVER_EXTRA[:] = args.server_args.split()
    args.server_env = {**moe_configs_env(args.moe_configs), **(world1_env() if args.world1 else {})}
    os.makedirs(args.out, exist_ok=True)
    out = {**provenance(), "moe_configs": args.moe_configs, "weights": args.weights, "layers": args.layers,
           "world1_rig": args.world1}
    try:
        {"check": check, "perf": perf, "profile": profile}[args.mode](args, out)
    finally:
        record_json(os.path.join(args.out, f"tbo_{args.mode}.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
