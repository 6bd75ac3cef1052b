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


def run_python(code: str, env: dict | None = None, timeout: int = 300,
               args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_ATOM")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def last_json(proc: subprocess.CompletedProcess):
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON output; rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


PARSE_MANY = """
import json, sys
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    try:
        prepare_server_args(argv)
        out[name] = None
    except BaseException as exc:
        out[name] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def parse_many(argvs: dict[str, list[str]], timeout: int = 600) -> dict:
    """Each named command line through real SGLang's prepare_server_args (with the plugin) in one
    fresh interpreter: name -> None if accepted, else [exception type, message]. A process that
    parsed --backend atom refuses a later command line without it, as a real launcher would, so
    keep the two kinds in separate calls."""
    return last_json(run_python(PARSE_MANY, timeout=timeout, args=(json.dumps(argvs),)))
