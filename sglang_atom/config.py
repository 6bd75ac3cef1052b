"""The one configuration object of sglang-atom, its CLI flags and their checks.

Pure Python: no SGLang import, so the flags, defaults and range checks are testable alone.
Every `--atom-*` flag is one field of `AtomConfig`; `add_arguments` derives the argparse
options from the fields, `from_namespace` reads them back, `validate` checks ranges.

The config crosses process boundaries as JSON in one environment variable, because SGLang
spawns its scheduler and DP-controller processes and their plugin loader runs before any
ServerArgs reaches them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from .admission.policy import PolicyParams

BACKEND_ENV = "SGLANG_ATOM_BACKEND"  # "atom" or "sglang"; documented for the Engine API
CONFIG_ENV = "SGLANG_ATOM_CONFIG"  # JSON of AtomConfig, set by the launcher for its children

BACKENDS = ("sglang", "atom")

_POLICY = PolicyParams()  # the admission defaults live with the policy; the flags take them from there


class AtomConfigError(ValueError):
    """A bad `--atom-*` value or an unsupported flag combination; the message says what to change."""


def _flag(default, help, *, choices=None, low=None, high=None, low_open=False):
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open},
    )


@dataclass(frozen=True)
class AtomConfig:
    backend: str = _flag("sglang", "Serving backend: 'atom' turns on sglang-atom.", choices=BACKENDS)

    # Prefill budget per DP rank (integration/cli.py, around_data_parallelism).
    prefill_tokens_per_rank: int = _flag(
        0,
        "With DP attention, the tokens each rank may prefill in one pass. 0: SGLang's "
        "--chunked-prefill-size itself, per rank, as ATOM does; SGLang alone divides it by --dp "
        "(8192 becomes 2048 per rank at DP4), which leaves each pass's fixed cost on a quarter "
        "of the tokens. Pass the divided value to get SGLang's budget back.",
        low=0,
    )

    # Coordinated DP prefill admission (sglang_atom.admission.policy).
    admission: str = _flag(
        "coalesce",
        "DP prefill admission policy: 'coalesce' (all ranks hold or fire prefill together) or 'off'.",
        choices=("coalesce", "off"),
    )
    admission_target_fill: float = _flag(
        _POLICY.target_fill,
        "Hold prefill until the pending prefill tokens of all ranks reach this fraction of their "
        "combined prefill budget (--atom-prefill-tokens-per-rank each); 0: fire as soon as the "
        "ranks are aligned.",
        low=0.0, high=1.0,
    )
    admission_align: bool = _flag(
        _POLICY.align, "Hold prefill while some ranks have nothing to prefill and others do (1 or 0)."
    )
    admission_max_hold_passes: int = _flag(
        _POLICY.max_hold_passes, "Never hold prefill for more than this many consecutive scheduler passes.", low=0
    )
    admission_max_wait_ms: int = _flag(
        _POLICY.max_wait_ms,
        "Fire prefill once the oldest waiting request on any rank has waited this long (ms).",
        low=1,
    )
    admission_chunked_max_hold_passes: int = _flag(
        _POLICY.chunked_max_hold_passes,
        "Hold prefill for at most this many passes while some rank has a chunked prefill in "
        "progress (0: a chunk in progress fires prefill on every rank, which keeps ranks aligned).",
        low=0,
    )
    admission_stall_passes: int = _flag(
        _POLICY.stall_passes,
        "Fire prefill when the pending tokens of all ranks have not grown for this many held passes.",
        low=1,
    )
    admission_kv_high: float = _flag(
        _POLICY.kv_high,
        "Fire prefill when some rank's KV cache usage is at or above this fraction.",
        low=0.0, high=1.0, low_open=True,
    )
    tbo_min_tokens: int = _flag(
        0,
        "Two-batch overlap splits a prefill only when its largest rank has at least this many "
        "tokens; admission fires as soon as every rank has this many pending. 0: from the "
        "model's expert widths, the tokens at which a pass's expert GEMMs reach 2 TFLOP (below "
        "that, split passes measured slower than unsplit ones; Qwen3-235B widths: 7168, "
        "DeepSeek-V3: 3072, Qwen3-30B-A3B: 26624).",
        low=0,
    )

    tbo_comm: str = _flag(
        "nccl",
        "How two-batch overlap moves micro-batch rows between DP ranks: 'nccl' (NCCL/RCCL "
        "all_gather/reduce_scatter, run by SM kernels beside the other micro-batch's GEMMs) or "
        "'copy-engine' (copies into peer-mapped PyTorch symmetric memory, run by the copy engines; "
        "CUDA, one node).",
        choices=("nccl", "copy-engine"),
    )
    tbo_nccl_max_ctas: int = _flag(
        0,
        "With --atom-tbo-comm nccl: run two-batch overlap's all_gather/reduce_scatter on their own "
        "NCCL communicator limited to this many CTAs (SMs), leaving the rest to the other "
        "micro-batch's GEMMs (0: NCCL's own choice, on SGLang's TP communicator).",
        low=0, high=64,
    )

    dp_gatherv: bool = _flag(
        False,
        "Move each MoE layer's rows by all_gatherv + reduce_scatterv of every rank's real rows in "
        "the passes where SGLang all-reduces them (every prefill pass that does not run in a "
        "CUDA graph): SGLang's SGLANG_DP_USE_GATHERV gather plus sglang-atom's reduce_scatterv "
        "combine for TP-sharded experts, about half of the all-reduces' bytes. Needs DP "
        "attention with --dp equal to --tp. Experimental: not yet measured on GPUs (1 or 0).",
    )

    # MoE expert kernels.
    moe_kernel: str = _flag(
        "auto",
        "MoE expert kernel: 'auto' (AITER fused_moe on ROCm, Triton fused MoE on CUDA), "
        "'triton' or 'aiter'.",
        choices=("auto", "triton", "aiter"),
    )

    # ------------------------------------------------------------------ flags
    @staticmethod
    def flag_name(field_name: str) -> str:
        return "--backend" if field_name == "backend" else "--atom-" + field_name.replace("_", "-")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("sglang-atom")
        for f in dataclasses.fields(cls):
            meta = f.metadata
            kind = bool_flag if f.type in ("bool", bool) else {"int": int, "float": float}.get(f.type, str)
            group.add_argument(
                cls.flag_name(f.name),
                dest=dest_name(f.name),
                type=kind,
                default=f.default,
                choices=meta["choices"],
                help=meta["help"] + f" Default: {f.default}.",
            )

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "AtomConfig":
        """Build from a parsed namespace; options absent from it keep their defaults."""
        values = {}
        for f in dataclasses.fields(cls):
            if hasattr(ns, dest_name(f.name)):
                values[f.name] = getattr(ns, dest_name(f.name))
        return cls(**values).validate()

    def validate(self) -> "AtomConfig":
        for f in dataclasses.fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            name = self.flag_name(f.name)
            if meta["choices"] is not None and value not in meta["choices"]:
                raise AtomConfigError(
                    f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}."
                )
            low, high = meta["low"], meta["high"]
            if low is not None and (value <= low if meta["low_open"] else value < low):
                bound = f"> {low}" if meta["low_open"] else f">= {low}"
                raise AtomConfigError(f"{name} must be {bound}, got {value}; pass a value {bound}.")
            if high is not None and value > high:
                raise AtomConfigError(f"{name} must be <= {high}, got {value}; pass a value <= {high}.")
        if self.tbo_min_tokens == 1:  # a one-token pass cannot be cut in two
            raise AtomConfigError("--atom-tbo-min-tokens must be 0 (from the model) or >= 2, got 1.")
        return self

    @property
    def enabled(self) -> bool:
        return self.backend == "atom"

    def policy_params(self, tbo_enabled: bool, tbo_min_tokens: int) -> PolicyParams:
        """`tbo_min_tokens`: --atom-tbo-min-tokens as resolved for the served model."""
        return PolicyParams(
            target_fill=self.admission_target_fill,
            align=self.admission_align,
            max_hold_passes=self.admission_max_hold_passes,
            max_wait_ms=self.admission_max_wait_ms,
            chunked_max_hold_passes=self.admission_chunked_max_hold_passes,
            stall_passes=self.admission_stall_passes,
            kv_high=self.admission_kv_high,
            tbo_enabled=tbo_enabled,
            tbo_min_tokens=tbo_min_tokens,
        )

    # ------------------------------------------------- passing to child processes
    def to_env(self, environ=os.environ) -> None:
        environ[BACKEND_ENV] = self.backend
        environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ=os.environ) -> "AtomConfig":
        """The config this process runs with: the launcher's JSON, else defaults plus the backend switch."""
        raw = environ.get(CONFIG_ENV)
        values = json.loads(raw) if raw else {}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise AtomConfigError(
                f"{CONFIG_ENV} holds settings this sglang-atom does not know ({', '.join(unknown)}); "
                f"it is written by the launcher for the processes it starts, so unset it.")
        backend = environ.get(BACKEND_ENV)
        if backend:
            values["backend"] = backend.strip().lower()
            if values["backend"] not in BACKENDS:
                raise AtomConfigError(f"{BACKEND_ENV} must be atom or sglang, got {backend!r}; set "
                                      f"{BACKEND_ENV}=atom or unset it.")
        return cls(**values).validate()


def dest_name(field_name: str) -> str:
    return "backend" if field_name == "backend" else "atom_" + field_name


def bool_flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1 or 0, got {text!r}")


def backend_requested(environ=os.environ) -> bool:
    """True when this process was told (by the launcher or the user) to run the atom backend."""
    return environ.get(BACKEND_ENV, "").strip().lower() == "atom"
