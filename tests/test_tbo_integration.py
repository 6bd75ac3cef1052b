"""Integration tier: sglang-atom's TBO hooks inside real SGLang 0.5.17 (CPU, no model).

The hooked SGLang split functions must give exactly the token-even halves the executor sizes
its collectives by, and the agreement must drop the split everywhere SGLang's gathered numbers
say it should. The layer execution itself needs a GPU (benchmarks/tbo_serving.py).
"""

from sglang_helpers import last_json, run_python

SCRIPT = r"""
import json, pkgutil, random
from types import SimpleNamespace
from sglang_atom.integration import runtime, tbo
from sglang_atom.tbo.split import micro_batch_rows, seq_cut
runtime.install(launcher=False)  # as in a scheduler process
from sglang.srt.batch_overlap import two_batch_overlap as sg
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.plugins.hook_registry import HookRegistry

out = {"patched": {t: t in HookRegistry._patched for t in tbo.TARGETS}}

rng = random.Random(0)
mismatches = []
for _ in range(400):
    lens = [rng.choice([1, 2, 7, 100, 1000, 5000]) for _ in range(rng.randint(1, 12))]
    k = sg.compute_split_seq_index(ForwardMode.EXTEND, sum(lens), lens, None)
    token = sg.compute_split_token_index(k, ForwardMode.EXTEND, lens, None)
    two_chunk = sg._is_two_chunk_split_enabled(lens)
    if (k, two_chunk) != seq_cut(lens) or token != micro_batch_rows([sum(lens)])[0][0]:
        mismatches.append([lens, k, token, two_chunk])
out["split_mismatches"] = mismatches[:5]

agree = tbo.make_agreement(min_tokens=4096)
def batch(mode, tokens, split=0):
    return SimpleNamespace(forward_mode=ForwardMode.EXTEND, tbo_split_seq_index=split,
                           global_forward_mode=mode, global_num_tokens=tokens)
cases = {
    "prefill_big": batch(ForwardMode.EXTEND, [8192, 0, 3000, 9000]),
    "prefill_small": batch(ForwardMode.EXTEND, [1000, 4095, 0, 0]),
    "decode": batch(ForwardMode.DECODE, [64, 64, 64, 64]),
    "modes_disagree": batch(None, [8192, 8192, 8192, 8192], split=None),
}
for b in cases.values():
    agree(b)
out["split_kept"] = {name: b.tbo_split_seq_index is not None for name, b in cases.items()}
out["mode_cleared"] = {name: b.global_forward_mode is None for name, b in cases.items()}
print(json.dumps(out))
"""


def test_hooked_sglang_split_is_token_even_and_agreed():
    out = last_json(run_python(SCRIPT, {"SGLANG_ATOM_BACKEND": "atom"}))
    assert all(out["patched"].values()), out["patched"]
    assert out["split_mismatches"] == []
    assert out["split_kept"] == {"prefill_big": True, "prefill_small": False, "decode": False,
                                 "modes_disagree": False}
    assert out["mode_cleared"] == {"prefill_big": False, "prefill_small": True, "decode": True,
                                   "modes_disagree": True}
