"""Helpers for the integration tier: run code against real SGLang in a fresh interpreter.

Hooks are process-global (SGLang's HookRegistry patches classes in place), so each scenario
runs in its own subprocess with a bounded time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QWEN = str(ROOT / "models" / "qwen3-moe-tiny")
CPU_ARGS = ["--device", "cpu", "--load-format", "dummy", "--skip-tokenizer-init"]


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_ATOM")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def last_json(proc: subprocess.CompletedProcess):
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON output; rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
