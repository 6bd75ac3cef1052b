"""Install and verify the hooks that change serving under `--backend atom`.

SGLang's HookRegistry only logs a hook it could not apply; sglang-atom checks each of its hooks
afterwards and stops the process instead, so a half-installed backend never serves.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pkgutil
from functools import lru_cache

from .. import platform
from ..config import AtomConfig
from ..validation import ServingSetup, admission_active, summary, tbo_active
from . import admission, dp_gatherv, prefix_attention, routing_compat, symbols, tbo

logger = logging.getLogger("sglang_atom")

_registered: set[str] = set()

# Roles of the processes in this server's lineage whose hooks were verified; children inherit
# it, so the scheduler's startup line can say where sglang-atom is active (child processes
# load plugins before SGLang configures their logging, so they cannot log it themselves).
HOOKED_ENV = "SGLANG_ATOM_HOOKED"


SOURCE = ("sglang_atom", "sglang-atom")  # HookSource(plugin_name, dist_name) for SGLang's logs


class AtomStartupError(SystemExit):
    """Stops startup. A SystemExit, because SGLang's plugin loader swallows Exceptions."""


@lru_cache(maxsize=1)
def process_config() -> AtomConfig:
    return AtomConfig.from_env()


def _env_flag(name: str) -> bool:
    """An SGLang boolean environment variable, read as SGLang reads it ("1"/"true")."""
    return os.environ.get(name, "").lower() in ("1", "true")


def serving_setup(server_args, architecture: str | None) -> ServingSetup:
    return ServingSetup(
        architecture=architecture,
        dp_attention=bool(server_args.enable_dp_attention),
        dp_size=int(server_args.dp_size),
        tp_size=int(server_args.tp_size),
        moe_a2a_backend=str(server_args.moe_a2a_backend),
        prefill_delayer=bool(server_args.enable_prefill_delayer),
        two_batch_overlap=bool(server_args.enable_two_batch_overlap),
        disaggregation_mode=str(server_args.disaggregation_mode),
        pp_size=int(server_args.pp_size),
        mixed_chunk=bool(server_args.enable_mixed_chunk),
        speculative=server_args.speculative_algorithm is not None,
        expert_balancing=bool(server_args.enable_eplb)
        or server_args.expert_distribution_recorder_mode is not None,
        ep_size=int(server_args.ep_size),
        shared_expert_tp1=_env_flag("SGLANG_SHARED_EXPERT_TP1"),
        nnodes=int(server_args.nnodes),
        dp_sync_skipped=_env_flag("SGLANG_SCHEDULER_SKIP_ALL_GATHER"),
        prefill_attention_backend=server_args.prefill_attention_backend or server_args.attention_backend,
        prefill_tokens_per_rank=(server_args.chunked_prefill_size
                                 if (server_args.chunked_prefill_size or 0) > 0 else None),
    )


def _after_init_schedule_policy(result, scheduler, *args, **kwargs):
    """Attach sglang-atom to this scheduler; TP rank 0 logs the one line saying what is active
    (here rather than in the launcher so the line appears for the CLI and the Engine API alike)."""
    cfg = process_config()
    setup = serving_setup(scheduler.server_args, None)
    tbo_on = tbo_active(cfg, setup)
    min_tokens = cfg.tbo_min_tokens
    if tbo_on and not min_tokens:  # 0: derived from the model
        try:
            min_tokens = tbo.split_min_tokens(scheduler.model_config.hf_text_config)
        except RuntimeError as exc:
            raise AtomStartupError(str(exc)) from exc
    admission.attach(scheduler, cfg, admission_active(cfg, setup), tbo_on, min_tokens)
    if scheduler.ps.tp_rank == 0:
        plan = platform.plan(platform.probe(), cfg.moe_kernel, os.environ)
        roles = hooked_roles() + ["scheduler"]
        logger.info(f"{summary(cfg, setup, plan, min_tokens)} | hooks verified in: {', '.join(roles)}")


class DPControllerProcess:
    """Process target standing in for SGLang's DP controller: load plugins, then run it.

    A class rather than a function so that `multiprocessing` pickles a reference to this module
    (SGLang's REPLACE wrapper would pickle as SGLang's own, unhooked function).
    """

    def __init__(self, *args, **kwargs):
        from sglang.srt.managers import data_parallel_controller
        from sglang.srt.plugins import load_plugins

        load_plugins()  # SGLANG_ATOM_BACKEND=atom: installs and verifies this process's hooks
        if installed():
            mark_hooked("dp_controller")
        run = data_parallel_controller.run_data_parallel_controller_process
        if run is DPControllerProcess:
            # Only in the launcher, whose own hook rebinds that name: SGLang always starts the
            # controller in a spawned process, where the name is SGLang's function again.
            raise RuntimeError("DPControllerProcess must run as a spawned process target")
        run(*args, **kwargs)


def runtime_hooks(launcher: bool):
    from sglang.srt.plugins.hook_registry import HookType

    hooks = [
        (symbols.SCHEDULER_TARGETS[0], _after_init_schedule_policy, HookType.AFTER),
        (symbols.SCHEDULER_TARGETS[1], admission.around_get_new_batch_prefill, HookType.AROUND),
        (symbols.SCHEDULER_TARGETS[2], admission.observe_gathered_rows, HookType.AFTER),
        (symbols.MLP_SYNC_TARGETS[0], admission.around_local_tensor, HookType.AROUND),
        (symbols.MLP_SYNC_TARGETS[1], admission.around_fallback_tensor, HookType.AROUND),
        (symbols.MLP_SYNC_TARGETS[2], admission.after_all_gather, HookType.AFTER),
    ]
    if launcher:
        hooks.append((symbols.DP_CONTROLLER_TARGET, DPControllerProcess, HookType.REPLACE))
        hooks.append((symbols.HTTP_SERVER_TARGET, routing_compat.before_http_server, HookType.BEFORE))
    else:
        # Model-side hooks, in the processes that run the model. The TBO hooks change nothing
        # unless --enable-two-batch-overlap is on (SGLang only reaches them through its TBO
        # paths); the prefix-attention plan serves every DeepSeek pass over a cached prefix;
        # the gatherv combine runs in SUM_LEN passes, only with --atom-dp-gatherv.
        cfg = process_config()
        hooks += tbo.hooks(cfg.tbo_min_tokens, cfg.tbo_comm, cfg.tbo_nccl_max_ctas)
        hooks += prefix_attention.hooks()
        if cfg.dp_gatherv:
            hooks += dp_gatherv.hooks()
    return hooks


def is_launcher() -> bool:
    """The process that parses arguments: not one SGLang spawned (schedulers, DP controller)."""
    return multiprocessing.parent_process() is None


def install(launcher: bool) -> None:
    """Register, apply and verify the runtime hooks of this process."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookSource

    hooks = runtime_hooks(launcher)
    targets = [target for target, _, _ in hooks]
    reads = symbols.HTTP_SERVER_READS if launcher else tbo.READS + prefix_attention.READS
    if not launcher and process_config().dp_gatherv:  # its hooks are installed only then
        reads += dp_gatherv.READS
    try:
        symbols.require(targets + list(symbols.OTHER_SYMBOLS) + list(reads))
    except symbols.SGLangMismatch as exc:
        raise AtomStartupError(f"sglang-atom: {exc}") from exc
    for target, hook, kind in hooks:
        if target not in _registered:
            HookRegistry.register(target, hook, kind, source=HookSource(*SOURCE))
            _registered.add(target)
    HookRegistry.apply_hooks()
    verify(hooks)
    if launcher:
        mark_hooked("launcher")


def verify(hooks) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry

    failed = []
    for target, hook, _ in hooks:
        current = pkgutil.resolve_name(target)
        applied = current is hook or _wraps(current, hook)
        if target not in HookRegistry._patched or not applied:
            failed.append(target)
    if failed:
        raise AtomStartupError(
            f"sglang-atom: SGLang did not apply its hooks on {', '.join(failed)} (see the "
            f"'Failed to apply hooks' log above); --backend atom cannot run without them."
        )


def _wraps(fn, hook) -> bool:
    """Whether `fn` is a HookRegistry wrapper around `hook` (an AROUND/AFTER closure)."""
    cells = getattr(fn, "__closure__", None) or ()
    return getattr(fn, "__wrapped__", None) is not None and any(
        c.cell_contents is hook for c in cells
    )


def installed() -> bool:
    return bool(_registered)


def mark_hooked(role: str) -> None:
    roles = hooked_roles()
    if role not in roles:
        os.environ[HOOKED_ENV] = ",".join(roles + [role])


def hooked_roles() -> list[str]:
    return [r for r in os.environ.get(HOOKED_ENV, "").split(",") if r]
