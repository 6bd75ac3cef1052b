"""Entry point in group `sglang.srt.plugins`: SGLang's load_plugins() calls `register` in every
process (launcher, Engine, schedulers; the DP controller through sglang-atom's own target)."""

from __future__ import annotations

from .config import backend_requested


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from .integration import cli, runtime, symbols

    symbols.require(symbols.CLI_TARGETS)
    for target, hook, kind in (
        (symbols.CLI_TARGETS[0], cli.after_add_cli_args, HookType.AFTER),
        (symbols.CLI_TARGETS[1], cli.around_from_cli_args, HookType.AROUND),
        (symbols.CLI_TARGETS[2], cli.before_post_init, HookType.BEFORE),
        (symbols.CLI_TARGETS[2], cli.after_post_init, HookType.AFTER),
        (symbols.CLI_TARGETS[3], cli.around_breakable_graph_rules, HookType.AROUND),
        (symbols.CLI_TARGETS[4], cli.around_data_parallelism, HookType.AROUND),
    ):
        HookRegistry.register(target, hook, kind)
    if backend_requested():
        runtime.install(launcher=runtime.is_launcher())
