"""All_gather / reduce_scatter of micro-batch rows by the GPUs' copy engines, over NVLink.

NCCL runs a collective as kernels whose CTAs spin on SMs; beside the expert GEMMs of the other
micro-batch they queue for SMs and slow the GEMMs down (2xH200: almost nothing hidden, see
benchmarks/results/NOTES-tbo.md). Here every rank's buffers are PyTorch symmetric memory, mapped
into every peer's address space, and data moves with plain device copies into peer memory,
which CUDA runs on copy engines. SM work left per collective: one barrier kernel (one CTA) and,
for reduce_scatter, the sum of `world` slices of this rank's rows.

    all_gather(mb):     push my padded rows into slot [me] of every rank's `gathered` buffer,
                        barrier; the local `gathered` buffer now holds every rank's rows.
    reduce_scatter(mb): push the block of partial sums that belongs to rank p into slot [me] of
                        rank p's `partials` buffer, barrier, sum the `world` slots.

All of it runs on one comm stream, in the same order on every rank. Reuse is safe without more
barriers: a rank pushes into a peer's `gathered[mb]` for layer l+1 only after the layer-l
reduce_scatter barrier of `mb`, which the peer reaches only once its experts have read
`gathered[mb]`; likewise `partials[mb]` is pushed to again only after the next all_gather barrier,
which follows the peer's sum. Symmetric buffers are allocated collectively; their size is a
function of the row counts, which are the same on every rank, so all ranks grow them together.
CUDA only (symmetric memory needs peer-mapped device memory); tests on CPU use `OverlapComm`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .overlap import RowsAndBuffers

# Symmetric buffers are sized in steps of this many rows per rank, so that a growing prompt
# mix triggers a handful of (collective, slow) rendezvous, not one per new size.
ROWS_STEP = 2048


class CopyEngineComm(RowsAndBuffers):
    def __init__(self, group, hidden: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__(hidden, dtype, device, dist.get_world_size(group), dist.get_rank(group))
        self.group = group
        # High priority: the barrier and the sum are short kernels that should not wait for a
        # whole GEMM to drain.
        self.stream = torch.cuda.Stream(self.device, priority=-1)
        self._symm: dict[tuple[str, int], tuple[int, object, list[torch.Tensor]]] = {}
        self._done = {(kind, mb): torch.cuda.Event() for kind in ("gather", "scatter") for mb in (0, 1)}

    def _symmetric(self, kind: str, mb: int, rows_per_rank: int) -> tuple[object, list[torch.Tensor]]:
        """(handle, [every rank's buffer as mapped here]) of `world * capacity` rows."""
        entry = self._symm.get((kind, mb))
        if entry is None or entry[0] < rows_per_rank:
            import torch.distributed._symmetric_memory as symm_mem

            capacity = -(-max(rows_per_rank, 1) // ROWS_STEP) * ROWS_STEP
            shape = (self.world * capacity, self.hidden)
            local = symm_mem.empty(shape, dtype=self.dtype, device=self.device)
            handle = symm_mem.rendezvous(local, self.group)
            peers = [local if p == self.rank else handle.get_buffer(p, shape, self.dtype)
                     for p in range(self.world)]
            entry = (capacity, handle, peers)
            self._symm[(kind, mb)] = entry
        return entry[1], entry[2]

    def issue_gather(self, mb: int, local: torch.Tensor) -> None:
        send = self._padded_send(mb, local)  # on the compute stream
        pad = send.shape[0]
        handle, bufs = self._symmetric("gathered", mb, pad)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for step in range(self.world):
                peer = (self.rank + step) % self.world
                bufs[peer][self.rank * pad:(self.rank + 1) * pad].copy_(send)
            handle.barrier()
            self._done[("gather", mb)].record(self.stream)

    def wait_gather(self, mb: int) -> torch.Tensor:
        torch.cuda.current_stream(self.device).wait_event(self._done[("gather", mb)])
        pad = self.padded_rows(mb)
        return self._real_rows(mb, self._symm[("gathered", mb)][2][self.rank][: self.world * pad])

    def issue_scatter(self, mb: int, partial: torch.Tensor) -> None:
        partial = self._padded_partial(mb, partial)
        pad = self.padded_rows(mb)
        handle, bufs = self._symmetric("partials", mb, pad)
        out = self._buffer("scattered", mb, pad)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        # `partial` comes from the compute stream's allocator: keep it alive until the copies ran.
        partial.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            for step in range(self.world):
                peer = (self.rank + step) % self.world
                bufs[peer][self.rank * pad:(self.rank + 1) * pad].copy_(partial[peer * pad:(peer + 1) * pad])
            handle.barrier()
            torch.sum(bufs[self.rank][: self.world * pad].view(self.world, pad, self.hidden), dim=0, out=out)
            self._done[("scatter", mb)].record(self.stream)

    def wait_scatter(self, mb: int) -> torch.Tensor:
        torch.cuda.current_stream(self.device).wait_event(self._done[("scatter", mb)])
        return self._buffers[("scattered", mb)][: self.rows[mb][self.rank]]
