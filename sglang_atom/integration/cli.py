"""Argument-parsing hooks: `--backend` and `--atom-*` on SGLang's parser, checks, defaults.

Installed in every process whatever the backend (they only run while arguments are parsed).
The launcher turns the parsed flags into an AtomConfig, checks it against the rest of
ServerArgs, publishes it to the environment for the processes SGLang spawns next, and installs
the runtime hooks in itself.
"""

from __future__ import annotations

import os

from ..config import BACKEND_ENV, AtomConfig, AtomConfigError, backend_requested
from .. import platform
from ..validation import check
from . import dp_gatherv, runtime, symbols


def register() -> None:
    """Register the argument-parsing hooks (every process, whatever the backend) and, under
    `--backend atom`, install and verify the runtime hooks of this process."""
    symbols.require(symbols.PLUGIN_API + symbols.CLI_TARGETS + symbols.CLI_READS)
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, hook, kind in (
        (symbols.CLI_TARGETS[0], after_add_cli_args, HookType.AFTER),
        (symbols.CLI_TARGETS[1], around_from_cli_args, HookType.AROUND),
        (symbols.CLI_TARGETS[2], before_post_init, HookType.BEFORE),
        (symbols.CLI_TARGETS[2], after_post_init, HookType.AFTER),
        (symbols.CLI_TARGETS[3], around_breakable_graph_rules, HookType.AROUND),
        (symbols.CLI_TARGETS[4], around_data_parallelism, HookType.AROUND),
    ):
        HookRegistry.register(target, hook, kind)
    if backend_requested():
        runtime.install(launcher=runtime.is_launcher())


def after_add_cli_args(result, parser, *args, **kwargs):
    AtomConfig.add_arguments(parser)
    if backend_requested():
        # The Engine-API switch also sets the CLI default, so both entry points agree.
        parser.set_defaults(backend="atom")


def around_from_cli_args(original, cls, args, *rest, **kwargs):
    cfg = AtomConfig.from_namespace(args)
    if not cfg.enabled and runtime.installed():
        raise AtomConfigError(
            f"{BACKEND_ENV}=atom is set in the environment but --backend sglang was given; "
            f"unset {BACKEND_ENV} or drop --backend sglang."
        )
    cfg.to_env()
    return original(cls, args, *rest, **kwargs)


def before_post_init(server_args, *args, **kwargs):
    """Platform defaults, while ServerArgs is still writable (it is read-only once resolved).

    Runs for both entry points: the CLI (via from_cli_args) and `sglang.Engine(**kwargs)`.
    """
    cfg = AtomConfig.from_env()
    if not cfg.enabled:
        return None
    plan = platform.plan(platform.probe(), cfg.moe_kernel, os.environ)
    os.environ.update(plan.env)  # read by SGLang at import time in the processes spawned next
    if cfg.dp_gatherv:
        os.environ.update(dp_gatherv.ENV)  # likewise
    if server_args.moe_runner_backend == "auto" and plan.moe_runner_backend != "auto":
        server_args.moe_runner_backend = plan.moe_runner_backend
    return None


def after_post_init(result, server_args, *args, **kwargs):
    """Check the resolved arguments, publish the config, install the runtime hooks here."""
    cfg = AtomConfig.from_env()
    if not cfg.enabled:
        return
    check(cfg, runtime.serving_setup(server_args, model_architecture(server_args)), platform.probe())
    cfg.to_env()  # the Engine API sets only the backend switch; children get the whole config
    runtime.install(launcher=True)


def around_breakable_graph_rules(original, server_args, *args, **kwargs):
    """Keep SGLang's breakable prefill CUDA graphs with --enable-two-batch-overlap under
    --backend atom: SGLang 0.5.17 turns them off for the flag ("TBO capture is unsupported"),
    which left every prefill pass eager, split or not. sglang-atom captures the graphs without
    micro-batches (`tbo.no_tbo_capture`) and runs only the split passes eagerly (the split
    agreement takes them out of the graphs on every rank alike), so passes below the split size
    keep their graphs. On 2xH200 (tiny Qwen3-MoE, DP2, 2026-11-23) a 4096-token prefill pass
    took 10.8 ms in the graphs and 32.6 ms on the TBO server, eager and split. Every other rule
    of SGLang's still applies. Runs while ServerArgs resolves, when it is still writable."""
    cfg = AtomConfig.from_env()
    if not (cfg.enabled and server_args.enable_two_batch_overlap and server_args.enable_dp_attention):
        return original(server_args, *args, **kwargs)
    server_args.enable_two_batch_overlap = False  # hidden from the rules only while they run
    try:
        return original(server_args, *args, **kwargs)
    finally:
        server_args.enable_two_batch_overlap = True


def model_architecture(server_args) -> str | None:
    if server_args.model_path.lower() in ("dummy", "none"):
        return None
    architectures = server_args.get_model_config().hf_config.architectures or [None]
    return architectures[0]


def around_data_parallelism(original, server_args, *args, **kwargs):
    """Give each DP rank the whole prefill budget (--atom-prefill-tokens-per-rank, by default
    SGLang's --chunked-prefill-size) instead of SGLang 0.5.17's --chunked-prefill-size // dp.
    SGLang has already sized its memory for the undivided value. Scaled up here so that SGLang's
    own division, and the prefill CUDA graph sizes it derives from the result, land on the
    per-rank budget. Measured on 2xH200 (tiny Qwen3-MoE, DP2, c128 short mix, 2026-11-23):
    8192 tokens per rank instead of 4096 gave plain SGLang 1.09-1.30x input throughput (mean
    1.18x over four paired repeats)."""
    cfg = AtomConfig.from_env()
    chunk = server_args.chunked_prefill_size
    if cfg.enabled and server_args.enable_dp_attention and chunk is not None and chunk > 0:
        per_rank = cfg.prefill_tokens_per_rank or chunk
        server_args.chunked_prefill_size = per_rank * server_args.dp_size
    return original(server_args, *args, **kwargs)
