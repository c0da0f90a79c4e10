"""The GPU check (issue #17): the whole study's costs on one device, measured side by side, in one run.

    bench/gpu.sh [--device cuda|cpu] [--config FILE] [--quick] [--out DIR] [--budget-s S] [--set k=v ...]
    python bench/gpu.py ...            (the same, in an environment that already has timevec's needs)

Sections, each printing one line (``[a] …`` to ``[f] …``) and recording its numbers in
``OUT/gpu-bench.json`` (and ``OUT/gpu-bench.md``):

(a) ``pytest -m gpu`` on the test files that carry the marker, in this process (on a CPU: "skipped");
(b) the fleet stage (:func:`timevec.distributed.fleet.run_fleet`) on the config: tokens/s per run
    (the fleet's run table) and of the whole fleet (Σ tokens / makespan), against a plain Hugging
    Face training loop (peft LoRA, AdamW, ``model(**batch).loss``, the same examples, batch, length,
    steps and precision) timed in this process on the same device;
(c) the evaluate stage (:func:`timevec.distributed.cells.run_cells`): cells/s against a plain forward
    loop (``torch.inference_mode``, the same splits and batch size) with the base; the GPU memory
    peak — of the whole device (``torch.cuda.mem_get_info`` sampled every 0.1 s: every process,
    CUDA contexts included) and of this process's plain loops (``torch.cuda.max_memory_allocated``);
    NaN on a CPU;
(d) one analogy trial's combine/evaluate ratio: ``WeightPatcher.apply_combination`` of 3 stored
    vectors (θ_pre + 1.0·τ_a + 0.3·τ_b − 0.3·τ_c) plus the restore, against one evaluation of a test
    split (:class:`timevec.evaluate.cells.CellEvaluator`), with the vectors in host memory (as the stage holds
    them) and, for comparison, already on the device;
(e) the study's headline at this scale: interpolate + analyze (:func:`run_pipeline`), then the
    findings rows own period best, decay, cosine r and interpolation (oracle α);
(f) the projection: the paper's monthly study (58 runs + 3,364 cells) for a model of T5-small's size
    (60 M parameters), from the measured seconds per run and per cell, scaled by the parameter-count
    ratio; is it ≤ 1 hour on this one device?

``--quick`` is a CPU-sized cut (the tiny embedded model of ``timevec/demo/tiny.yaml``, LM by year
2014–2017) that checks every section end to end; its rates say nothing about a real model.
``--budget-s``: a section that would start after the budget is spent is skipped and says so, and so
is the headline when its estimate (from the cells' measured rate) exceeds what is left; a section
whose input is missing (a failed or skipped earlier section) is skipped naming it. Exit
status 0 when no section failed, 1 otherwise, 2 for bad arguments (no CUDA for ``--device cuda``).
The store lives in a temporary folder (``--store`` to choose one), never under ``--out``: the device
machine sends ``$OUT`` back and 6 SmolLM2 vectors are 1.6 GB.

Here: the command line and the order of the sections; each section is a module of ``bench/gpu_check/``
(its context, the device and the config, in ``gpu_check/context.py``), run by ``harness.Sections``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys

import harness
from gpu_check.analogy import analogy_ratio
from gpu_check.cells import cells
from gpu_check.context import DEFAULT_CONFIG, TINY, GpuCheck, finite
from gpu_check.fleet import fleet
from gpu_check.gpu_tests import gpu_tests
from gpu_check.headline import headline, headline_estimate
from gpu_check.projection import projection


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(__doc__, harness.config_options(
        None, help=f"default: {DEFAULT_CONFIG.relative_to(harness.REPO)} ({TINY.relative_to(harness.REPO)} with --quick)"))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="the CPU-sized cut: tiny embedded model, 4 years, a few steps")
    parser.add_argument("--out", default=None, help="summary folder (default $OUT, else ./runs/gpu-bench)")
    parser.add_argument("--store", default=None, help="store folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="skip sections that would start after this many seconds")
    return parser.parse_args(argv)


def run(check: GpuCheck) -> int:
    """The six sections in turn (each skipped, or failed, without stopping the others), then the summary files."""
    cfg, sections, summary = check.config, check.sections, check.summary
    check.say(f"GPU check: {summary['device']['name']} (torch {check.torch.__version__}), config "
              f"{summary['config']}{' --quick' if check.args.quick else ''}; {cfg.name}: {cfg.tasks} by "
              f"{cfg.granularities} {cfg.all_periods()[0]}–{cfg.all_periods()[-1]}; store {check.store_dir}; "
              f"summary in {check.out}")
    try:
        sections.run("a", "gpu_tests", lambda: gpu_tests(check))
        sections.run("b", "fleet", lambda: fleet(check))
        sections.run("c", "cells", lambda: cells(check), needs=("fleet",))
        sections.run("d", "analogy", lambda: analogy_ratio(check), needs=("fleet",))
        sections.run("e", "headline", lambda: headline(check), needs=("cells",), estimate=lambda: headline_estimate(check),
                     basis="from the cells' measured rate")
        sections.run("f", "projection", lambda: projection(check), needs=("fleet", "cells"))
    finally:
        check.memory.stop()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if check.own_store:
            shutil.rmtree(check.store_dir, ignore_errors=True)
    summary["device_memory_peak_bytes"] = finite(check.memory.peak) if check.device.type == "cuda" else None
    summary["seconds"] = round(sections.elapsed(), 1)
    failed = [n for n, s in summary["sections"].items() if s["status"] == "failed"]
    skipped = [n for n, s in summary["sections"].items() if s["status"] == "skipped"]
    check.say(f"done in {summary['seconds']:.0f} s: {6 - len(failed) - len(skipped)} sections ok, "
              f"{len(skipped)} skipped{' (' + ', '.join(skipped) + ')' if skipped else ''}, {len(failed)} failed"
              f"{' (' + ', '.join(failed) + ')' if failed else ''}")
    summary["lines"] = sections.lines
    (check.out / "gpu-bench.json").write_text(json.dumps(summary, indent=2, default=str))
    (check.out / "gpu-bench.md").write_text(markdown(summary, sections.lines))
    print(f"summary: {check.out / 'gpu-bench.json'}, {check.out / 'gpu-bench.md'}", flush=True)
    return 1 if failed else 0


def markdown(summary: dict, lines: list[str]) -> str:
    d = summary["device"]
    head = [f"# GPU check — {d['name']}, {summary['date']}", "",
            f"torch {d['torch']}" + (f", CUDA {d.get('cuda')}, driver {d.get('driver', '?')}" if d["type"] == "cuda" else "")
            + f"; config `{summary['config']}`{' --quick' if summary['quick'] else ''}; "
            f"{summary['seconds']:.0f} s in all", "", "```"]
    return "\n".join(head + lines + ["```", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.output_block()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the driver, the plain loops and every Ray worker stay on the CPU
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: --device cuda, but torch sees no CUDA device (torch "
              f"{torch.__version__}); run with --device cpu", file=sys.stderr)
        return 2
    from timevec.config import ConfigError
    from timevec.distributed.verbosity import set_verbose

    set_verbose(False)
    try:
        check = GpuCheck(args)
    except ConfigError as exc:
        print(f"bench/gpu.py: {exc}", file=sys.stderr)
        return 2
    return run(check)


if __name__ == "__main__":
    sys.exit(main())
