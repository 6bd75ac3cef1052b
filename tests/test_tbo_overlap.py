"""Two-batch overlap executor on 4 gloo ranks (real async collectives, no GPU)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The start of a forward as every rank runs it: each collective is issued before the other
# micro-batch's compute and waited for after it, so it runs behind that compute; micro-batch
# 1's reduce_scatter runs behind micro-batch 0's next-layer attention.
FIRST_LAYER = ["0:attn", "0:gather>", "1:attn", "1:gather>",
               "0:gather<", "0:experts", "0:scatter>", "1:gather<", "1:experts", "1:scatter>",
               "0:scatter<", "0:attn", "0:gather>", "1:scatter<", "1:attn"]
EVENTS_PER_FORWARD = 3 * 12  # 3 layers x (2 attn, 2 experts, 4 issues, 4 waits)


def run(seed):
    proc = subprocess.run([sys.executable, str(ROOT / "tests/drivers/overlap_gloo.py"), str(seed)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4, proc.stderr[-3000:]
    return rows


def test_overlapped_layers_match_the_plain_computation_on_every_rank():
    for r in run(seed=1):
        assert r["matches_reference"] == [{"0": True, "1": True}] * 2, r["rank"]
        assert r["buffers_reused"]
    ranks = run(seed=2)
    rows = {r["rank"]: r["rows_out"] for r in ranks}
    # rank 3 has no rows in either micro-batch; the run finishing on all ranks shows it joined
    # every collective, and it gets back an empty slice of the hidden width
    assert rows[3] == {"0": [0, 16], "1": [0, 16]}
    # The collectives pad every rank to the largest (12 and 9 rows), the experts see only the
    # real rows of all ranks: 5+12+7+0 and 9+3+0+0, not 4x12 and 4x9.
    assert all(r["expert_rows"] == [[0, 24], [1, 12]] for r in ranks)


def test_stage_and_collective_order_is_the_same_on_every_rank_and_overlaps():
    rows = run(seed=3)
    traces = [r["trace"] for r in rows]
    assert all(t == traces[0] for t in traces)
    layer = ["0.{l}.gather", "1.{l}.gather", "0.{l}.scatter", "1.{l}.scatter"]
    assert traces[0] == [s.format(l=l) for _ in range(2) for l in range(3) for s in layer]
    events = rows[0]["events"]
    assert all(r["events"] == events for r in rows)
    assert len(events) == 2 * EVENTS_PER_FORWARD
    for start in (0, EVENTS_PER_FORWARD):
        forward = events[start:start + EVENTS_PER_FORWARD]
        assert forward[:len(FIRST_LAYER)] == FIRST_LAYER
        last_issue = max(i for i, e in enumerate(forward) if e.endswith(">"))
        for i, e in enumerate(forward):
            if not e.endswith(">") or i == last_issue:  # the last reduce_scatter has nothing after it
                continue
            mb, kind = e.split(":")[0], e.split(":")[1][:-1]
            waited = forward.index(f"{mb}:{kind}<", i)
            between = [x for x in forward[i + 1:waited] if x.endswith(("attn", "experts"))]
            assert between and all(not x.startswith(mb + ":") for x in between), (i, e, between)


def test_each_step_runs_inside_its_own_micro_batch_context():
    """In SGLang every step of micro-batch i must see child attention backend i."""
    from contextlib import contextmanager

    from sglang_atom.tbo.overlap import run_interleaved

    active, seen = [], []

    def context(mb):
        @contextmanager
        def enter():
            active.append(mb)
            try:
                yield
            finally:
                active.pop()
        return enter

    def program(mb, steps):
        for step in range(steps):
            seen.append((mb, list(active)))
            yield f"{mb}.{step}"

    labels = []
    run_interleaved([program(0, 3), program(1, 2)], labels.append, contexts=[context(0), context(1)])
    assert labels == ["0.0", "1.0", "0.1", "1.1", "0.2"]
    assert all(stack == [mb] for mb, stack in seen)  # exactly its own context, nothing nested
    assert active == []
