"""PNG plots of a results table: speed-up per stage shape, and % of floor per kernel."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import speedup_over_eager  # noqa: E402

BASELINES = ("eager channels_last", "eager")


def _grouped_bars(ax, rows, value, providers, stages, key="stage"):
    width = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        heights = []
        for stage in stages:
            match = [value(r) for r in rows if r["provider"] == provider and r[key] == stage]
            heights.append(match[0] if match else 0.0)
        ax.bar([s + i * width for s in range(len(stages))], heights, width, label=provider)
    ax.set_xticks([s + width * (len(providers) - 1) / 2 for s in range(len(stages))], stages)


def _by_op(rows, dtype, pass_name):
    ops = sorted({r["op"] for r in rows})
    return [(op, [r for r in rows if r["op"] == op and r["dtype"] == dtype
                  and r["pass"] == pass_name]) for op in ops]


def write_plots(rows, env, out_dir):
    """model.png (each model case's speed-up over eager channels_last, when model rows
    exist), speedup.png (fwd+bwd
    speed-up over eager, channels_last where it applies, per op and stage) and floor.png
    (% of floor of our kernels, per op, pass and stage), for the first dtype in the rows.
    Returns the paths written."""
    model_rows = [r for r in rows if r.get("op") == "model"]
    rows = [r for r in rows if r.get("op") != "model"]
    paths = [_model_plot(model_rows, env, out_dir)] if model_rows else []
    if not rows:
        return paths
    dtype = rows[0]["dtype"]
    title = f"{env['device']} ({env['label']}), {dtype}, {env['date']}"
    for name, value, pass_name, pick, ylabel in (
            ("speedup.png", speedup_over_eager, "fwd+bwd", lambda p: p not in BASELINES,
             "fwd+bwd speed-up over eager (channels_last)"),
            ("floor.png", lambda r: r["pct_of_floor"], "fwd", lambda p: p.startswith("ours"),
             "forward: % of the measured floor")):
        groups = _by_op(rows, dtype, pass_name)
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        for ax, (op, op_rows) in zip(axes[0], groups):
            providers = sorted({r["provider"] for r in op_rows if pick(r["provider"])})
            stages = list(dict.fromkeys(r["stage"] for r in op_rows))
            _grouped_bars(ax, op_rows, value, providers, stages)
            ax.set_title(op)
            ax.set_ylabel(ylabel)
            if name == "speedup.png":
                ax.axhline(1.0, color="black", linewidth=0.8)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _model_plot(rows, env, out_dir):
    """model.png: each model case's (training step, inference batch) speed-up over eager
    channels_last, per provider; the images/s are in results.md."""
    fig, ax = plt.subplots(figsize=(9, 4))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    _grouped_bars(ax, rows, speedup_over_eager, providers, cases, key="case")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over eager channels_last")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    fig.suptitle(f"{env['device']} ({env['label']}), {rows[0]['dtype']}, {env['date']}",
                 fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "model.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
