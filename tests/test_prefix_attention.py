"""Integration tier: the host-side plan of DeepSeek's MHA over a cached prefix, against SGLang's
own `FlashInferMhaChunkKVRunner.update_wrapper` (CPU, flashinfer's wrappers recorded).

SGLang's real `prepare_chunked_prefix_cache_info` fills the batch's chunk fields (only its
kv-index kernel, which `update_wrapper` does not read, is skipped); SGLang's function and the
hook then plan recording wrappers, and every wrapper must get the same arguments. The hook runs
a second time with the batch's device-side tensors removed, to show that it reads host lengths
only (on a GPU, reading those is the device-to-host copy it exists to avoid).
"""

from sglang_helpers import last_json, run_python

SCRIPT = r"""
import json, pkgutil
import torch
from sglang_atom.integration import prefix_attention, runtime
# in a list: HookRegistry also rebinds module globals that name the function it replaces
saved = [pkgutil.resolve_name(prefix_attention.TARGET)]
runtime.install(launcher=False)  # as in a scheduler process
original = saved[0]
hooked = pkgutil.resolve_name(prefix_attention.TARGET)

from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool
from sglang.srt.model_executor import forward_batch_deepseek_mha_mixin as mixin
mixin.get_token_to_kv_pool = lambda: object.__new__(MLATokenToKVPool)

class Batch(mixin.ForwardBatchDeepSeekMHAMixin):
    def __init__(self, prefix, extend, one_shot, capacity):
        self.batch_size = len(prefix)
        self.extend_prefix_lens_cpu, self.extend_seq_lens_cpu = prefix, extend
        self.extend_prefix_lens = torch.tensor(prefix, dtype=torch.int32)
        self.seq_lens_cpu = torch.tensor([p + e for p, e in zip(prefix, extend)])
        self.seq_lens = self.seq_lens_cpu.to(torch.int32)
        self.mha_one_shot, self.capacity = one_shot, capacity
    def get_max_chunk_capacity(self):
        return self.capacity
    def prepare_chunked_kv_indices(self, device):  # a Triton kernel; update_wrapper does not read it
        pass

class Wrapper:
    def __init__(self):
        self.calls = []
    def begin_forward(self, **kw):
        self.calls.append({k: v.tolist() if torch.is_tensor(v) else str(v) for k, v in kw.items()})

class Runner:
    num_local_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim = 16, 128, 64, 128
    q_data_type = torch.bfloat16
    def __init__(self, seq_lens):
        self.qo_indptr = torch.zeros(64, dtype=torch.int32)
        # as the pass's prefill metadata leaves it (paged prefill: every sequence's whole length)
        self.kv_indptr = torch.zeros(64, dtype=torch.int32)
        self.kv_indptr[1:len(seq_lens) + 1] = torch.cumsum(seq_lens, 0)
        self.chunk_ragged_wrappers, self.ragged_wrapper = [], Wrapper()
    def update_prefix_chunks(self, n):
        while len(self.chunk_ragged_wrappers) < n:
            self.chunk_ragged_wrappers.append(Wrapper())

def plan(fn, case, strip=False):
    prefix, extend, one_shot, disable_ragged = case
    b = Batch(prefix, extend, one_shot, capacity=4096)
    if one_shot:  # forward_normal_one_shot_core: no prefix chunks
        b.num_prefix_chunks = 0
    else:
        b.prepare_chunked_prefix_cache_info(torch.device("cpu"))
    runner = Runner(b.seq_lens_cpu)
    if strip:
        b.extend_prefix_lens = b.seq_lens = b.prefix_chunk_cu_seq_lens = None
        runner.qo_indptr = runner.kv_indptr = None
    fn(runner, b, disable_ragged)
    return {"chunks": [w.calls for w in runner.chunk_ragged_wrappers],
            "ragged": runner.ragged_wrapper.calls}

cases = {
    "chunked": ([0, 3000, 9000], [500, 700, 64], False, False),
    "chunked_one_seq": ([5000], [4096], False, False),
    "chunked_no_ragged": ([1200, 6000], [10, 20], False, True),
    "one_shot": ([4096, 0], [4096, 2000], True, False),
}
out = {"hooked": runtime._wraps(hooked, prefix_attention.update_wrapper) and original is not hooked,
       "sglang": {}, "atom": {}, "atom_host_only": {}}
for name, case in cases.items():
    out["sglang"][name] = plan(original, case)
    out["atom"][name] = plan(hooked, case)
    out["atom_host_only"][name] = plan(hooked, case, strip=True)
print(json.dumps(out))
"""


def test_host_plan_matches_sglangs_and_reads_host_lengths_only():
    out = last_json(run_python(SCRIPT, {"SGLANG_ATOM_BACKEND": "atom"}))
    assert out["hooked"]
    assert out["atom"] == out["sglang"]
    assert out["atom_host_only"] == out["sglang"]
    chunked = out["sglang"]["chunked"]
    # capacity 4096 over 3 sequences: chunks of 1365 prefix rows per sequence, 9000 -> 7 chunks
    assert len(chunked["chunks"]) == 7
    assert chunked["chunks"][0][0]["kv_indptr"] == [0, 0, 1365, 2730]
    assert chunked["chunks"][0][0]["qo_indptr"] == [0, 500, 1200, 1264]
    assert chunked["ragged"][0]["kv_indptr"] == [0, 500, 1200, 1264]
    assert out["sglang"]["chunked_no_ragged"]["ragged"] == []
    # one shot: the new rows attend to every row of their sequence, prefix included
    assert out["sglang"]["one_shot"]["chunks"] == []
    assert out["sglang"]["one_shot"]["ragged"][0]["kv_indptr"] == [0, 8192, 10192]
