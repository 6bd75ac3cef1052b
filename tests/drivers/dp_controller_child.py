"""Run sglang-atom's DP-controller process target in a spawned child, as SGLang 0.5.17 does.

The launcher part parses --backend atom (publishing the config to the environment) and spawns a
child whose target is what SGLang's engine now uses for the DP controller. The child stands in
a stub for SGLang's controller loop (which would start schedulers and GPUs) and reports what
the target did before calling it: hooks installed and verified, role recorded. Prints JSON.

usage: python dp_controller_child.py MODEL_DIR
"""

import json
import sys

import torch.multiprocessing as mp


def child(queue, target):
    from sglang.srt.managers import data_parallel_controller

    def stub_controller(*args, **kwargs):
        import os
        import pkgutil

        f = pkgutil.resolve_name("sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill")
        queue.put({"args": list(args), "hooked_env": os.environ.get("SGLANG_ATOM_HOOKED"),
                   "scheduler_wrapped": f.__code__.co_filename.endswith("hook_registry.py")})

    data_parallel_controller.run_data_parallel_controller_process = stub_controller
    target("server_args", "port_args")  # the parent's target, pickled across the spawn


def main():
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.entrypoints import engine
    from sglang.srt.server_args import prepare_server_args

    prepare_server_args(["--model-path", sys.argv[1], "--device", "cpu", "--tp", "2", "--dp", "2",
                         "--enable-dp-attention", "--load-format", "dummy", "--skip-tokenizer-init",
                         "--backend", "atom"])
    target = engine.run_data_parallel_controller_process
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue, target))
    proc.start()
    report = queue.get(timeout=240)
    proc.join(timeout=30)
    report["target"] = f"{target.__module__}.{target.__qualname__}"
    report["exitcode"] = proc.exitcode
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
