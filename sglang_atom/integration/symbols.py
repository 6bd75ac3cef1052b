"""The SGLang internals of the plugin API, argument parsing and the scheduler, and `require`,
the check that stops startup when one is missing. The model-side modules (`tbo`, `moe_layers`,
`prefix_attention`, `dp_gatherv`) list theirs beside their code; `cli.register` and
`runtime.install` check every list that applies before installing a hook."""

from __future__ import annotations

import pkgutil

SUPPORTED_SGLANG = "0.5.17"

# SGLang's plugin API: how every hook is registered, applied and verified.
PLUGIN_API = (
    "sglang.srt.plugins.load_plugins",
    "sglang.srt.plugins.hook_registry.HookRegistry",
    "sglang.srt.plugins.hook_registry.HookRegistry._patched",
    "sglang.srt.plugins.hook_registry.HookType",
    "sglang.srt.plugins.hook_registry.HookSource",
)

# Hook targets for argument parsing (installed in every process, whatever the backend).
CLI_TARGETS = (
    "sglang.srt.server_args.ServerArgs.add_cli_args",
    "sglang.srt.server_args.ServerArgs.from_cli_args",
    "sglang.srt.server_args.ServerArgs.__post_init__",
    "sglang.srt.server_args.ServerArgs._disable_breakable_cudagraph_if_incompatible",
    "sglang.srt.server_args.ServerArgs._handle_data_parallelism",
)

# Read by the launcher's checks (the served model's architecture).
CLI_READS = ("sglang.srt.server_args.ServerArgs.get_model_config",)

# Hook targets that change serving (installed only with --backend atom).
SCHEDULER_TARGETS = (
    "sglang.srt.managers.scheduler.Scheduler.init_schedule_policy",
    "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill",
    "sglang.srt.managers.scheduler.Scheduler.get_next_batch_to_run",
)
# The per-pass DP-attention sync; admission appends each rank's state to the row it gathers.
_MLP_SYNC = "sglang.srt.managers.scheduler_components.dp_attn.MLPSyncBatchInfo"
MLP_SYNC_TARGETS = (
    f"{_MLP_SYNC}._get_local_tensor",
    f"{_MLP_SYNC}._get_fallback_tensor",
    f"{_MLP_SYNC}.all_gather",
)
# 0.5.17's DP controller process does not load plugins; the launcher points its process target
# at a callable of ours that does (later SGLang releases call load_plugins() there themselves).
DP_CONTROLLER_TARGET = "sglang.srt.entrypoints.engine.run_data_parallel_controller_process"

# /generate's alias for sglang-router's `data_parallel_rank` (routing_compat.py): the launcher adds
# it to SGLang's app just before SGLang starts serving that app, and with several HTTP workers
# points the uvicorn.run of SGLang's http_server at an app module of ours that adds it.
HTTP_SERVER_TARGET = "sglang.srt.entrypoints.http_server._setup_and_run_http_server"
HTTP_SERVER_READS = (
    "sglang.srt.entrypoints.http_server.app",
    "sglang.srt.entrypoints.http_server.uvicorn",
    "sglang.srt.managers.io_struct.GenerateReqInput.routed_dp_rank",
)

# Other internals read by the scheduler hooks.
_BATCH = "sglang.srt.managers.schedule_batch"
OTHER_SYMBOLS = (
    f"{_BATCH}.NextBatchPlan",
    f"{_BATCH}.ScheduleBatch.is_extend_in_batch",
    f"{_BATCH}.ScheduleBatch.tbo_split_seq_index",
    f"{_MLP_SYNC}.tp0_info",
    "sglang.srt.managers.data_parallel_controller.run_data_parallel_controller_process",
)


class SGLangMismatch(RuntimeError):
    pass


def missing(names) -> list[str]:
    absent = []
    for name in names:
        try:
            pkgutil.resolve_name(name)
        except (ImportError, AttributeError, ValueError):
            absent.append(name)
    return absent


def require(names) -> None:
    absent = missing(names)
    if absent:
        import sglang

        raise SGLangMismatch(
            f"sglang-atom supports SGLang {SUPPORTED_SGLANG}, but SGLang {sglang.__version__} lacks "
            f"{', '.join(absent)}; install sglang=={SUPPORTED_SGLANG} or use --backend sglang."
        )
