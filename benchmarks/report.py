"""Summarize benchmark result JSONs (from admission_ab.py) as a markdown table and plots.

    python3 benchmarks/report.py RESULT.json [RESULT.json ...] --out DIR [--baseline plain]

Rows are grouped by (workload, config, concurrency); repeats are reduced to mean and
[min-max] so noise stays visible. Per workload the markdown table gives throughput, latency,
padding ratio and input tok/s relative to the baseline config at the same concurrency. The
plots follow InferenceX: total tok/s per GPU against output tok/s per user (one line per
config, points labelled by concurrency), and input/output throughput against concurrency.
Writes DIR/summary.md and DIR/<workload>_*.png and prints the markdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys

# Metrics reduced to mean/min/max per group.
METRICS = ["input_tok_s", "steady_input_tok_s", "output_tok_s", "total_tok_s_per_gpu", "output_tok_s_per_user",
           "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "padding_ratio_mean", "padding_row_share"]


# ----------------------------------------------------------------------------- load
def load_runs(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """All rows of the given result files, and one meta dict (command, machine, date, path) each."""
    rows, metas = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rates = sorted({r["request_rate"] for r in data.get("runs", []) if r.get("request_rate")})
        metas.append({"path": path, **{k: data.get(k, "") for k in ("command", "machine", "date")},
                      "arrivals": (f"open loop, Poisson {', '.join(f'{x:g}' for x in rates)} requests/s, "
                                   "concurrency = the most in flight") if rates else "closed loop"})
        rows.extend({**r, "_source": len(metas) - 1} for r in data.get("runs", []))
    return rows, metas


# ----------------------------------------------------------------------------- aggregate
def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (workload, config, concurrency): repeats, METRICS as x / x_min / x_max, failed.

    Nulls (padding ratio without the atom observer, keys missing in older files) are ignored;
    a metric with no values at all is None. Groups keep the order they first appear in, which
    is the order the configs were run in, with concurrency ascending.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["config"], r["concurrency"]), []).append(r)
    first = {}  # first-seen index of each workload and config, for a stable order
    for w, c, _ in groups:
        first.setdefault(("w", w), len(first))
        first.setdefault(("c", c), len(first))
    out = []
    for key in sorted(groups, key=lambda k: (first["w", k[0]], first["c", k[1]], k[2])):
        runs = groups[key]
        agg = {"workload": key[0], "config": key[1], "concurrency": key[2], "repeats": len(runs),
               "failed": sum(r.get("failed") or 0 for r in runs),
               # kept so that merging files from different GPU counts is visible in the report
               "n_gpus": sorted({r["n_gpus"] for r in runs if r.get("n_gpus") is not None})}
        for m in METRICS:
            vals = [r[m] for r in runs if r.get(m) is not None]
            agg[m] = statistics.mean(vals) if vals else None
            agg[m + "_min"] = min(vals) if vals else None
            agg[m + "_max"] = max(vals) if vals else None
        out.append(agg)
    return out


def paired_ratios(rows: list[dict], baseline: str) -> dict[tuple, list[float]]:
    """(workload, config, concurrency) -> input tok/s of each run over the baseline's run of the
    same repeat in the same result file. With admission_ab --interleave such a pair ran minutes
    apart on servers that were up side by side, so the spread of these ratios is the noise of
    the comparison itself, which the ratio of means hides."""
    base = {(r["_source"], r["workload"], r["concurrency"], r.get("repeat")): r.get("input_tok_s")
            for r in rows if r["config"] == baseline}
    out: dict[tuple, list[float]] = {}
    for r in rows:
        b = base.get((r["_source"], r["workload"], r["concurrency"], r.get("repeat")))
        if r["config"] != baseline and b and r.get("input_tok_s") is not None and r.get("repeat") is not None:
            out.setdefault((r["workload"], r["config"], r["concurrency"]), []).append(r["input_tok_s"] / b)
    return out


def timed(rows: list[dict]) -> list[dict]:
    """The rows the results are made of: without admission_ab's warm-up repeats."""
    return [r for r in rows if not r.get("warmup")]


def relative_throughput(rows: list[dict], field: str) -> dict[str, dict[int, float]]:
    """config -> {value of `field` ('slot', 'repeat'): mean over cells of input tok/s over that
    config's mean of timed runs in the same cell}. Values away from 1.0 mean the run's place
    (slot) or time (repeat; warm-up repeats are negative) moved the result."""
    def cell(r):
        return r["_source"], r["workload"], r["config"], r["concurrency"]
    usable = [r for r in rows if r.get(field) is not None and r.get("input_tok_s")]
    cells: dict[tuple, list[float]] = {}
    for r in timed(usable):
        cells.setdefault(cell(r), []).append(r["input_tok_s"])
    rel: dict[str, dict[int, list[float]]] = {}
    for r in usable:
        if cell(r) in cells:
            rel.setdefault(r["config"], {}).setdefault(r[field], []).append(
                r["input_tok_s"] / statistics.mean(cells[cell(r)]))
    return {c: {k: statistics.mean(v) for k, v in sorted(by.items())} for c, by in rel.items()}


def slot_effects(rows: list[dict]) -> dict[str, dict[int, float]]:
    """For interleaved runs (rows with a 'slot'): config -> {place in its cell's server order
    (0 = first): relative input tok/s}."""
    return relative_throughput(timed(rows), "slot")


def repeat_drift(rows: list[dict]) -> dict[str, dict[int, float]]:
    """config -> {repeat (warm-up repeats negative): relative input tok/s}. On 2xH200 the same
    server ran 1.6x faster in its third repeat than in its first (2026-11-23), more than any
    effect under test: this table shows whether a file has such drift."""
    return relative_throughput(rows, "repeat")


def repeat_label(rep: int) -> str:
    """r0, r1, ... for timed repeats; w1, w2, ... for admission_ab's warm-up repeats (-1, -2, ...)."""
    return f"w{-rep}" if rep < 0 else f"r{rep}"


# Relative input tok/s spread between a config's timed repeats above which the report warns.
DRIFT_WARNING = 0.10


# ----------------------------------------------------------------------------- markdown
def _machine(text: str) -> str:
    """`nvidia-smi -L` output condensed to e.g. '4x NVIDIA H200'; anything else on one line."""
    names = re.findall(r"^GPU \d+: (.+?) \(UUID", text or "", re.M)
    if not names:
        return " ".join((text or "?").split())
    return ", ".join(f"{n}x {name}" for name, n in collections.Counter(names).items())


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _span(a: dict, m: str, spec: str) -> str:
    """'mean [min-max]', or just the mean when there is one repeat or no spread."""
    mean, lo, hi = a[m], a[m + "_min"], a[m + "_max"]
    if mean is None or a["repeats"] == 1 or lo == hi:
        return _fmt(mean, spec)
    return f"{_fmt(mean, spec)} [{_fmt(lo, spec)}-{_fmt(hi, spec)}]"


def _ratios(values: list[float] | None) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    mean = f"{statistics.mean(values):.2f}"
    return mean if f"{lo:.2f}" == f"{hi:.2f}" else f"{mean} [{lo:.2f}-{hi:.2f}]"


def _relative_table(title: str, blurb: str, by_config: dict[str, dict[int, float]], column) -> list[str]:
    keys = sorted({k for by in by_config.values() for k in by})
    lines = ["", f"## {title}", "", blurb, "",
             "| config | " + " | ".join(column(k) for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for config, by in by_config.items():
        lines.append(f"| {config} | " + " | ".join(f"{by[k]:.3f}" if k in by else "-" for k in keys) + " |")
    return lines


def markdown(aggregated: list[dict], metas: list[dict], baseline: str = "plain",
             pairs: dict | None = None, slots: dict | None = None, drift: dict | None = None) -> str:
    lines = ["# Benchmark summary", "", "## Sources", ""]
    for m in metas:
        lines.append(f"- `{m['path']}`: {_machine(m['machine'])}, {m['date'] or '?'}")
        lines.append(f"  - command: `{m['command'] or '?'}`")
        lines.append(f"  - arrivals: {m.get('arrivals', 'closed loop')}")
    if any(len(a["n_gpus"]) > 1 for a in aggregated):
        lines += ["", "**Warning:** some groups merge runs with different GPU counts."]
    base = {(a["workload"], a["concurrency"]): a["input_tok_s"]
            for a in aggregated if a["config"] == baseline}
    header = ["config", "concurrency", "repeats", "input tok/s", "steady input tok/s", "output tok/s", "tok/s/GPU",
              "tok/s/user", "mean TTFT ms", "p99 TTFT ms", "padding ratio", "padding rows", f"x {baseline}, paired repeats",
              f"x {baseline}"]
    for workload in dict.fromkeys(a["workload"] for a in aggregated):
        rows = [a for a in aggregated if a["workload"] == workload]
        # concurrency-major with the baseline first, so each row sits next to what it is compared to
        rows.sort(key=lambda a: (a["concurrency"], a["config"] != baseline))
        lines += ["", f"## {workload}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for a in rows:
            ref = base.get((workload, a["concurrency"]))
            ratio = f"{a['input_tok_s'] / ref:.2f}x" if ref and a["input_tok_s"] is not None else ""
            failed = f" ({a['failed']} failed)" if a["failed"] else ""
            cells = [a["config"] + failed, str(a["concurrency"]), str(a["repeats"]),
                     _span(a, "input_tok_s", ",.0f"), _span(a, "steady_input_tok_s", ",.0f"),
                     _span(a, "output_tok_s", ",.0f"),
                     _span(a, "total_tok_s_per_gpu", ",.0f"), _span(a, "output_tok_s_per_user", ".1f"),
                     _span(a, "mean_ttft_ms", ",.0f"), _span(a, "p99_ttft_ms", ",.0f"),
                     _span(a, "padding_ratio_mean", ".3f"), _span(a, "padding_row_share", ".3f"),
                     _ratios((pairs or {}).get((workload, a["config"], a["concurrency"]))), ratio]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Values are mean [min-max] over repeats; steady input tok/s leaves out the first "
                 "wave and the tail of the closed loop; tok/s/GPU counts input + output tokens; "
                 "padding ratio is the mean over passes of each pass's padding share, padding rows "
                 "the share of all gathered rows that were padding; "
                 f"x {baseline} is the ratio of mean input tok/s to {baseline} at the same concurrency, "
                 f"paired repeats the mean [min-max] of each repeat's ratio to {baseline}'s same repeat "
                 "in the same result file.")
    if slots:
        lines += _relative_table(
            "Place in the rotation (interleaved runs)",
            "Input tok/s of a config's runs at each place in their cell's server order (0 = first), "
            "over that config's mean in the cell; 1.00 everywhere means order does not matter.",
            slots, lambda k: f"place {k}")
    if drift:
        lines += _relative_table(
            "Repeats in the order they ran",
            "Input tok/s of a config's runs in each repeat, over that config's mean of timed "
            "repeats in the cell; w1, w2: warm-up repeats, run first and left out of the results "
            "above. 1.00 everywhere means the servers did not drift over the run.",
            drift, repeat_label)
        spread = {c: max(v for k, v in by.items() if k >= 0) - min(v for k, v in by.items() if k >= 0)
                  for c, by in drift.items() if any(k >= 0 for k in by)}
        drifting = sorted(c for c, s in spread.items() if s > DRIFT_WARNING)
        if drifting:
            lines += ["", f"**Drift:** the timed repeats of {', '.join(drifting)} differ by more than "
                      f"{DRIFT_WARNING:.0%} of their mean; compare configs by their paired repeats, not "
                      "by their means."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots
def plots(aggregated: list[dict], out_dir: str) -> list[str]:
    """Two PNGs per workload; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")  # headless: benchmark machines have no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    thousands = StrMethodFormatter("{x:,.0f}")  # 160,000 reads faster than 160000
    os.makedirs(out_dir, exist_ok=True)
    configs = list(dict.fromkeys(a["config"] for a in aggregated))
    # the same colour for a config in every figure
    color = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(configs)}
    paths = []
    for workload in dict.fromkeys(a["workload"] for a in aggregated):
        rows = [a for a in aggregated if a["workload"] == workload]
        gpus = sorted({g for a in rows for g in a["n_gpus"]})
        suffix = f" ({'/'.join(map(str, gpus))} GPUs)" if gpus else ""
        by_config = {c: sorted((a for a in rows if a["config"] == c), key=lambda a: a["concurrency"])
                     for c in configs}
        by_config = {c: rs for c, rs in by_config.items() if rs}

        # (1) throughput per GPU vs interactivity; error bars span min-max over repeats
        fig, ax = plt.subplots(figsize=(8, 6))
        for c, rs in by_config.items():
            x = [a["output_tok_s_per_user"] for a in rs]
            y = [a["total_tok_s_per_gpu"] for a in rs]
            yerr = [[a["total_tok_s_per_gpu"] - a["total_tok_s_per_gpu_min"] for a in rs],
                    [a["total_tok_s_per_gpu_max"] - a["total_tok_s_per_gpu"] for a in rs]]
            ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, color=color[c], label=c)
            for a in rs:
                ax.annotate(f"c{a['concurrency']}", (a["output_tok_s_per_user"], a["total_tok_s_per_gpu"]),
                            textcoords="offset points", xytext=(5, 5), fontsize=8, color=color[c])
        ax.set_xlabel("Output tok/s per user (interactivity)")
        ax.set_ylabel("Total tok/s per GPU (input + output)")
        ax.yaxis.set_major_formatter(thousands)
        ax.set_title(f"{workload}: throughput per GPU vs interactivity{suffix}\n"
                     "points labelled by concurrency")
        ax.grid(True, alpha=0.3)
        ax.legend(title="config")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{workload}_tput_vs_interactivity.png"))
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

        # (2) input and output throughput vs concurrency
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, m, label in ((axes[0], "input_tok_s", "Input tok/s"),
                             (axes[1], "output_tok_s", "Output tok/s")):
            for c, rs in by_config.items():
                x = [a["concurrency"] for a in rs]
                y = [a[m] for a in rs]
                yerr = [[a[m] - a[m + "_min"] for a in rs], [a[m + "_max"] - a[m] for a in rs]]
                ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, color=color[c], label=c)
            conc = sorted({a["concurrency"] for a in rows})
            ax.set_xscale("log", base=2)  # concurrency sweeps double
            ax.set_xticks(conc, [str(v) for v in conc])
            ax.minorticks_off()
            ax.set_xlabel("Concurrency (requests in flight)")
            ax.set_ylabel(f"{label} (whole server)")
            ax.set_title(f"{label} vs concurrency")
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(thousands)
            ax.grid(True, alpha=0.3)
            ax.legend(title="config")
        fig.suptitle(f"{workload}: throughput vs concurrency{suffix}")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{workload}_tput_vs_concurrency.png"))
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result JSON files (admission_ab.py ab.json)")
    p.add_argument("--out", required=True, help="directory for summary.md and the PNGs")
    p.add_argument("--baseline", default="plain", help="config the 'x baseline' column divides by")
    args = p.parse_args(argv)

    rows, metas = load_runs(args.results)
    aggregated = aggregate(timed(rows))
    md = markdown(aggregated, metas, args.baseline, pairs=paired_ratios(timed(rows), args.baseline),
                  slots=slot_effects(rows), drift=repeat_drift(rows))
    os.makedirs(args.out, exist_ok=True)
    pngs = plots(aggregated, args.out)
    # summary.md links the plots by relative path so the directory can be moved as a whole
    md_file = md + "\n## Plots\n\n" + "".join(f"![{os.path.basename(f)}]({os.path.basename(f)})\n"
                                              for f in pngs)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md_file)
    print(md_file, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
