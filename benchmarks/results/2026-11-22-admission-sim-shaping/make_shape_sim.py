"""Builds shape_sim.py: the simulator's `simulate` with per-rank budget shaping at a fire (a
scratch experiment, not product code). Run from the repo root:

    PYTHONPATH=. python3 benchmarks/results/2026-11-22-admission-sim-shaping/make_shape_sim.py > /tmp/shape_sim.py
    PYTHONPATH=. python3 /tmp/shape_sim.py

Shaping rule tried: when atom fires, every prefilling rank's budget is capped at
max(second-largest rank's min(pending, budget), shape x budget), from the synced states all
ranks share.
"""
import inspect

from sglang_atom.admission import simulator as S

src = inspect.getsource(S.simulate).replace("def simulate(policy,", "def simulate_shaped(shape, policy,")
old = """            if (fire or chunk_only) and (r.waiting or r.chunked):
                left, batch = budget, []"""
assert old in src
src = src.replace(old, old.replace("left, batch = budget, []", "left, batch = cap, []"))
old = """        # Each rank: prefill (if allowed and it has work), else decode, else idle.
        tokens, extends = [], []"""
assert old in src
src = src.replace(old, old + """
        seen = synced if lagged else states
        cap = budget
        if shape and fire and isinstance(policy, S.AtomPolicy):
            want = sorted((min(s.pending_tokens, budget) for s in seen if s.has_prefill), reverse=True)
            if len(want) >= 2:
                cap = max(want[1], int(shape * budget))""")
print("from sglang_atom.admission.simulator import *\nimport sglang_atom.admission.simulator as S\n" + src + '''
model, _ = fit_step_model()
for wl, budget, cprs in (("short", 2048, (32, 64)), ("8k1k", 8192, (16, 32))):
    for cpr in cprs:
        for shape in (0, 0.25, 0.5):
            r = simulate_shaped(shape, AtomPolicy(PolicyParams()), 4, WORKLOADS[wl], model,
                                concurrency_per_rank=cpr, requests_per_client=4, budget=budget)
            print(wl, "concurrency", cpr * 4, "shape", shape, "input tok/s/rank", r["input_tok_s_per_rank"],
                  "output", r["output_tok_s_per_rank"], "padding", r["padding_ratio_mean"],
                  "ttft_p50", r["ttft_p50_ms"], "passes", r["passes"], flush=True)
''')
