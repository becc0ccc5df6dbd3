"""The benchmark suite (`make bench`): op, block and model benchmarks for the device at hand.

    python -m benchmarks [--ops] [--block] [--model] [--quick] [--autotune] [--dtype bf16 fp32]
                         [--out DIR]

Writes DIR/<device>-<date>/results.json (one row per case, provider and pass), results.md
(tables) and PNG plots, and with the block benchmarks the launch ledger of a block fwd+bwd
(ledger.md, ledger.json: benchmarks/ledger.py). Without a GPU it runs the CPU suite (cpp backend
against eager and torch.compile on CPU, small shapes), labelled CPU everywhere.
"""
import datetime
import os
import subprocess
import sys

from benchmarks import (bench_block, bench_dwconv, bench_layernorm, bench_mlp, bench_model,
                        harness, ledger)

SUITES = {"ops": [bench_dwconv, bench_layernorm, bench_mlp], "block": [bench_block],
          "model": [bench_model]}


def write_ledger(directory, plan, tiny):
    """The ledger beside the results (launches, bytes and the modeled table of a block
    forward+backward at batch 64: benchmarks/ledger.py), in a subprocess: on a CPU it counts our
    Triton launches under TRITON_INTERPRET=1, which the timed suite must not run under. On a GPU
    the model takes the ceilings this run measured."""
    env = dict(os.environ)
    if plan.device.type != "cuda":
        env["TRITON_INTERPRET"] = "1"
    command = [sys.executable, "-m", "benchmarks.ledger", "--batch", "2" if tiny else "64",
               "--device", plan.device.type, "--json", os.path.join(directory, "ledger.json")]
    if plan.gpu:
        ceilings = ledger.measured_ceilings(plan.results.floors, "torch.bfloat16")
        command += [arg for name, value in ceilings.items()
                    for arg in (f"--{name.replace('_', '-')}", str(value))]
    if tiny:
        command += ["--stages", "4", "--variant", "v1", "--dtype", "bf16"]
    with open(os.path.join(directory, "ledger.md"), "w") as f:
        subprocess.run(command, stdout=f, env=env, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = harness.parser(__doc__.splitlines()[0])
    harness.add_autotune_option(parser)
    for group in SUITES:
        parser.add_argument(f"--{group}", action="store_true", help=f"run the {group} benchmarks")
    args = parser.parse_args(argv)
    groups = [g for g in SUITES if getattr(args, g)] or list(SUITES)
    suites = [s for g in groups for s in SUITES[g]]
    plan = harness.Plan("benchmarks", args)
    try:
        from tqdm import tqdm
        progress = tqdm(total=sum(len(s.cases(plan)) for s in suites), unit="case")
    except ImportError:
        progress = None
    for suite in suites:
        harness.run_suite(suite, plan, args, progress)
    if progress is not None:
        progress.close()
    results = plan.results
    directory = os.path.join(args.out, f"{results.device_slug()}-{results.env['date']}")
    os.makedirs(directory, exist_ok=True)
    try:  # plots need matplotlib; the results do not
        from benchmarks.plots import write_plots
        figures = write_plots(results.rows, results.env, directory)
    except ImportError as error:
        print(f"no plots: {error}")
        figures = ()
    results.write(directory, "results", figures)
    if "block" in groups:
        write_ledger(directory, plan, getattr(args, "tiny", False))
    print(plan.results.markdown())
    print(f"wrote {directory}/results.json, results.md and plots "
          f"({datetime.datetime.now():%H:%M})")


if __name__ == "__main__":
    main()
