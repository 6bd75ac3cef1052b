"""Entry point in group `sglang.srt.plugins`: SGLang's load_plugins() calls `register` in every
process (launcher, Engine, schedulers; the DP controller through sglang-atom's own target)."""

from __future__ import annotations

from .config import backend_requested


def register() -> None:
    """SGLang's loader logs an Exception raised here and goes on. That is right under
    `--backend sglang`: an SGLang that sglang-atom cannot hook still serves, as if it were not
    installed, with the reason in its log. Under `--backend atom` this process must not serve
    without its hooks, so any failure to register them stops it (SystemExit is not swallowed)."""
    try:
        from .integration import cli

        cli.register()
    except Exception as exc:
        if backend_requested():
            raise SystemExit(f"sglang-atom cannot start --backend atom: {exc}") from exc
        raise
