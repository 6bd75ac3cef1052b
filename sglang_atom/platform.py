"""Which GPU platform this is, and what sglang-atom uses on it.

The one place that decides between ROCm (AITER fused_moe, RCCL, a HIP queue setting for the
comm stream) and CUDA (Triton fused MoE, NCCL). `probe()` looks at torch; everything else is a
pure function of its result so both branches are unit-tested on any machine.

ROCm: unverified on AMD hardware here (no AMD GPU was available); written to the published
SGLang/AITER settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import AtomConfigError

# HIP gives each process GPU_MAX_HW_QUEUES hardware queues (4 by default). With fewer than 5 a
# second stream can share a queue with the compute stream, which serializes the collectives we
# put on the comm stream behind the compute they are meant to hide under.
ROCM_MIN_HW_QUEUES = 5


@dataclass(frozen=True)
class PlatformPlan:
    platform: str  # "cuda", "rocm" or "cpu"
    moe_kernel: str  # "triton", "aiter", or "sglang-default" (CPU: SGLang's own path)
    collective_backend: str  # "nccl", "rccl" or "gloo"
    moe_runner_backend: str  # value for SGLang's --moe-runner-backend ("auto": leave SGLang's)
    env: dict = field(default_factory=dict)  # variables SGLang reads at import/first use


def probe() -> str:
    import torch

    if getattr(torch.version, "hip", None):
        return "rocm"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def plan(platform: str, requested_kernel: str = "auto", environ: dict | None = None) -> PlatformPlan:
    """What to run on `platform` given `--atom-moe-kernel`; `environ` is read to keep user settings."""
    environ = environ or {}
    if platform == "rocm":
        if requested_kernel == "triton":
            kernel = "triton"
            env = {}
        else:
            kernel = "aiter"
            # SGLang picks its AITER MoE runner only when SGLANG_USE_AITER is set at import time.
            env = {"SGLANG_USE_AITER": "1"}
        queues = int(environ.get("GPU_MAX_HW_QUEUES", "0") or 0)
        if queues < ROCM_MIN_HW_QUEUES:
            env["GPU_MAX_HW_QUEUES"] = str(ROCM_MIN_HW_QUEUES)
        return PlatformPlan("rocm", kernel, "rccl", kernel, env)
    if requested_kernel == "aiter":
        raise AtomConfigError(
            f"--atom-moe-kernel aiter needs a ROCm GPU, but this is {platform}; "
            "pass --atom-moe-kernel auto or triton."
        )
    if platform == "cpu":  # parsing and tests only: SGLang keeps its own CPU MoE path
        return PlatformPlan("cpu", "sglang-default", "gloo", "auto", {})
    return PlatformPlan("cuda", "triton", "nccl", "triton", {})
