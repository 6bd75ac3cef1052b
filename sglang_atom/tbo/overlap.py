"""Two-batch overlap of MoE layers over all_gather / reduce_scatter.

Each micro-batch runs, per MoE layer: attention on its local rows; all_gather of those rows
(async); experts on the gathered rows (each rank holds a TP shard of every expert, so its
output is a partial sum); reduce_scatter back to local rows (async); residual/combine. A
micro-batch yields right after issuing each collective, and `run_interleaved` then runs the
other micro-batch, so A's collectives are in flight while B computes, and vice versa:

    A.attn A.gather> | B.attn B.gather> | A.experts A.scatter> | B.experts B.scatter> | A.combine A.attn ...

Collectives are issued with `async_op=True` on one process group. On NCCL they run on the
group's own communication stream (one stream shared by both micro-batches, so every rank
issues them in the same order: A.gather, B.gather, A.scatter, B.scatter, ...); on gloo (CPU
tests) they run on gloo's threads. Buffers are persistent per (kind, micro-batch) and only
grow, so steady-state forwards allocate nothing.

The collectives move each rank's rows padded to the largest rank's (rows per rank are known on
every rank before the first layer), but the experts see only real rows: the gathered pad rows
are dropped before them and put back (as don't-care rows) before the reduce_scatter. Otherwise a
pass where one rank prefills and the others have few tokens would run the experts on
world x max(rows), up to `world` times the real work (measured on 2xH200, see
benchmarks/results/NOTES-tbo.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterator, Protocol, Sequence

import torch
import torch.distributed as dist


class LayerOps(Protocol):
    """The compute of one MoE layer for one micro-batch; the executor supplies the collectives."""

    def attention(self, mb: int, layer: int) -> torch.Tensor: ...  # local rows -> MoE input rows

    def experts(self, mb: int, layer: int, gathered: torch.Tensor) -> torch.Tensor: ...  # partial sums

    def combine(self, mb: int, layer: int, local: torch.Tensor) -> None: ...  # reduced local rows


class Transport(Protocol):
    """Moves one micro-batch's rows between ranks: `OverlapComm` (c10d collectives) or
    `copy_engine.CopyEngineComm` (copies into peer-mapped symmetric memory)."""

    def set_rows(self, mb: int, rows_per_rank: list[int]) -> None: ...

    def issue_gather(self, mb: int, local: torch.Tensor) -> None: ...

    def wait_gather(self, mb: int) -> torch.Tensor: ...  # every rank's real rows, rank-major

    def issue_scatter(self, mb: int, partial: torch.Tensor) -> None: ...  # partials of those rows

    def wait_scatter(self, mb: int) -> torch.Tensor: ...


class RowsAndBuffers:
    """What every transport shares: the rows of each micro-batch on every rank (the same list on
    every rank, set once per forward) and persistent local buffers that only grow."""

    def __init__(self, hidden: int, dtype: torch.dtype, device: torch.device | str, world: int, rank: int):
        self.hidden, self.dtype, self.device = hidden, dtype, torch.device(device)
        self.world, self.rank = world, rank
        self.rows: dict[int, list[int]] = {}
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}

    def set_rows(self, mb: int, rows_per_rank: list[int]) -> None:
        if len(rows_per_rank) != self.world:
            raise ValueError(f"need {self.world} row counts, got {len(rows_per_rank)}")
        self.rows[mb] = list(rows_per_rank)

    def padded_rows(self, mb: int) -> int:
        return max(self.rows[mb])

    def _buffer(self, kind: str, mb: int, rows: int) -> torch.Tensor:
        buf = self._buffers.get((kind, mb))
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty((max(rows, 1), self.hidden), dtype=self.dtype, device=self.device)
            self._buffers[(kind, mb)] = buf
        return buf[:rows]

    def _padded_send(self, mb: int, local: torch.Tensor) -> torch.Tensor:
        """This rank's rows of `mb` padded to the largest rank's; pad rows are never read."""
        send = self._buffer("send", mb, self.padded_rows(mb))
        send[: local.shape[0]].copy_(local)
        return send

    def _is_padded(self, mb: int) -> bool:
        return min(self.rows[mb]) != self.padded_rows(mb)

    def _real_rows(self, mb: int, gathered: torch.Tensor) -> torch.Tensor:
        """Gathered rank-major blocks of `padded_rows` rows -> only the real rows, rank-major."""
        if not self._is_padded(mb):
            return gathered
        pad, rows = self.padded_rows(mb), self.rows[mb]
        out = self._buffer("real", mb, sum(rows))
        torch.cat([gathered[p * pad:p * pad + n] for p, n in enumerate(rows)], out=out)
        return out

    def _padded_partial(self, mb: int, partial: torch.Tensor) -> torch.Tensor:
        """Partial sums of the real rows -> rank-major blocks of `padded_rows` rows, as the
        reduce_scatter needs them; the pad rows' sums land in rows that `wait_scatter` drops."""
        if not self._is_padded(mb):
            return partial
        pad, rows = self.padded_rows(mb), self.rows[mb]
        out = self._buffer("padded_partial", mb, self.world * pad)
        blocks, start = out.view(self.world, pad, self.hidden), 0
        for p, n in enumerate(rows):
            blocks[p, :n].copy_(partial[start:start + n])
            start += n
        return out


class OverlapComm(RowsAndBuffers):
    """Async all_gather / reduce_scatter of one micro-batch's rows through c10d (NCCL or gloo),
    into persistent buffers."""

    def __init__(self, group, hidden: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__(hidden, dtype, device, dist.get_world_size(group), dist.get_rank(group))
        self.group = group
        self._pending: dict[tuple[str, int], tuple[object, torch.Tensor]] = {}

    def issue_gather(self, mb: int, local: torch.Tensor) -> None:
        send = self._padded_send(mb, local)
        out = self._buffer("gathered", mb, send.shape[0] * self.world)
        work = dist.all_gather_into_tensor(out, send, group=self.group, async_op=True)
        self._pending[("gather", mb)] = (work, out)

    def wait_gather(self, mb: int) -> torch.Tensor:
        work, out = self._pending.pop(("gather", mb))
        work.wait()
        return self._real_rows(mb, out)

    def issue_scatter(self, mb: int, partial: torch.Tensor) -> None:
        out = self._buffer("scattered", mb, self.padded_rows(mb))
        work = dist.reduce_scatter_tensor(out, self._padded_partial(mb, partial), group=self.group,
                                          async_op=True)
        self._pending[("scatter", mb)] = (work, out)

    def wait_scatter(self, mb: int) -> torch.Tensor:
        work, out = self._pending.pop(("scatter", mb))
        work.wait()
        return out[: self.rows[mb][self.rank]]


def nccl_group(ranks: list[int], max_ctas: int = 0, high_priority: bool = False):
    """A new NCCL group of `ranks` whose kernels use at most `max_ctas` CTAs (SMs; 0: NCCL's
    choice), on a high-priority stream if asked.

    NCCL's collective kernels take SMs from the GEMMs they should hide behind: on 2xH200 they
    stretched the other micro-batch's GEMMs by about 18%, more than the whole comm time
    (benchmarks/results/NOTES-tbo.md). Fewer CTAs make the collectives slower but leave the GEMMs
    their SMs. Every rank of `ranks` must call this at the same point (it is a collective).
    """
    return dist.new_group(ranks, backend="nccl", pg_options=nccl_options(max_ctas, high_priority),
                          use_local_synchronization=True)


def nccl_options(max_ctas: int = 0, high_priority: bool = False):
    opts = dist.ProcessGroupNCCL.Options(is_high_priority_stream=high_priority)
    if max_ctas > 0:
        opts.config.max_ctas = max_ctas  # NCCL's minimum stays at its default of 1
    return opts


def make_transport(kind: str, group, hidden: int, dtype: torch.dtype, device) -> Transport:
    """`--atom-tbo-comm` value -> transport: "nccl" (c10d collectives) or "copy-engine"."""
    if kind == "copy-engine":
        from .copy_engine import CopyEngineComm  # CUDA only; imports this module

        return CopyEngineComm(group, hidden, dtype, device)
    return OverlapComm(group, hidden, dtype, device)


def micro_batch_program(mb: int, num_layers: int, ops: LayerOps, comm: Transport) -> Iterator[str]:
    """One micro-batch's MoE layers as a generator that yields after issuing each collective."""
    for layer in range(num_layers):
        comm.issue_gather(mb, ops.attention(mb, layer))
        yield f"{mb}.{layer}.gather"
        partial = ops.experts(mb, layer, comm.wait_gather(mb))
        comm.issue_scatter(mb, partial)
        yield f"{mb}.{layer}.scatter"
        ops.combine(mb, layer, comm.wait_scatter(mb))


def run_interleaved(
    programs: Sequence[Iterator[str]],
    trace: Callable[[str], None] | None = None,
    contexts: Sequence[Callable[[], ContextManager]] | None = None,
) -> None:
    """Run each program to its next yield in turn until all finish (single thread, one compute stream).

    `contexts[i]()` is entered around every step of program i: in SGLang each micro-batch's
    attention must see its own child attention backend.
    """
    active = list(range(len(programs)))
    while active:
        for i in list(active):
            with contexts[i]() if contexts is not None else nullcontext():
                label = next(programs[i], None)
            if label is None:
                active.remove(i)
            elif trace is not None:
                trace(label)
