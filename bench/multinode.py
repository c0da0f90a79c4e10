"""Multi-node vs one node, the same CPUs: the demo's fleet and cells on 1 node × 2 CPUs vs 2 nodes × 1 CPU.

    .venv/bin/python bench/multinode.py [--config timevec/demo/demo.yaml] [--set KEY=VALUE ...] [--rounds 1]

Both layouts are real Ray clusters of separate ``ray start`` processes on loopback
(:mod:`timevec.distributed.local_cluster`), with the store on SeaweedFS S3
(:mod:`timevec.store.local_s3`), measured one after the
other in one run (``--rounds 2`` adds a second pass in the reverse order, so a machine shared
with other work loads both alike):

- ``1x2``: a head node with 2 CPUs, nothing else (every run and actor on the head);
- ``2x1``: a head with 0 CPUs (the driver's node) and two worker nodes of 1 CPU each.

The driver is this process, attached to the head (``ray.init(address=...)``); each layout gets a
fresh store prefix, and θ_pre is prepared before the clock starts (the same in both). Printed per
layout: the fleet's makespan (the Tune run) against its ideal Σ(wall seconds of each run) / 2
CPUs, Σ train seconds of the runs (compute: slower per run on another node?), the cells stage's
seconds split into actor start-up, split preparation and forward passes, and the node that ran
each trial and actor (Ray's state API); then the ratio 2x1 / 1x2 of fleet, cells and their sum
(goal ≤ 1.1×) and where the difference goes.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import uuid

import harness
import ray

from timevec.config import load_config
from timevec.distributed.local_cluster import MultiNodeCluster
from timevec.store import VectorStore
from timevec.store.local_s3 import start_s3_server

LAYOUTS = {"1x2": (2, []), "2x1": (0, [1, 1])}  # name -> (head CPUs, worker CPUs)


def _placement(cluster: MultiNodeCluster) -> dict[str, dict[str, int]]:
    """Per node: the trials' training calls and the evaluation actors' items it ran (Ray's state API)."""
    from ray.util.state import list_tasks

    names = {n.node_id: n.name for n in cluster.nodes}
    out: dict[str, dict[str, int]] = {"finetune": {}, "cells": {}}
    for task in list_tasks(address=cluster.dashboard_url, limit=10_000, detail=True, raise_on_missing_output=False):
        stage = "cells" if task.name.endswith("CellActor.run") else "finetune" if task.name.endswith(".train") else None
        if stage and task.node_id:
            node = names.get(task.node_id, task.node_id[:8])
            out[stage][node] = out[stage].get(node, 0) + 1
    return out


def run_layout(name: str, config_path: str, sets: list[str], s3) -> dict[str, float | str]:
    from timevec.data.corpus import load_corpus
    from timevec.distributed.cells import run_cells
    from timevec.distributed.fleet import run_fleet
    from timevec.train.loop import prepare_base

    head_cpus, workers = LAYOUTS[name]
    url = s3.url(f"bench-mn-{name}-{uuid.uuid4().hex[:6]}")
    config = load_config(config_path, [*sets, f"store.url={url}", f"store.storage_options.endpoint_url={s3.endpoint_url}"])
    store = VectorStore.from_config(config.store)
    prepare_base(config, load_corpus(config.corpus), store)  # θ_pre: before the clock, the same for both
    cluster = MultiNodeCluster(head_cpus=head_cpus, worker_cpus=list(workers))
    began = time.perf_counter()
    cluster.start()
    startup = time.perf_counter() - began
    try:
        ray.init(address=cluster.gcs_address, log_to_driver=False, logging_level=logging.ERROR)
        began = time.perf_counter()
        runs = run_fleet(config, store, progress=False)
        fleet_s = time.perf_counter() - began
        assert (runs["status"] == "done").all(), runs[["task", "period", "status", "error"]]
        _, stats = run_cells(config, store)
        placement = _placement(cluster)
    finally:
        ray.shutdown()
        cluster.stop()
    ideal = runs["wall_seconds"].sum() / 2
    return {
        "layout": name,
        "cluster_start_s": startup,
        "fleet_s": fleet_s,
        "makespan_s": runs.attrs["makespan_s"],
        "ideal_s": ideal,
        "sum_train_s": runs["seconds"].sum(),
        "sum_wall_s": runs["wall_seconds"].sum(),
        "cells_s": stats.seconds,
        "cells_startup_s": stats.startup_seconds,
        "cells_prepare_s": stats.prepare_seconds,
        "cells_forward_s": stats.forward_seconds,
        "cells_actor_s": stats.actor_seconds,
        "cells": stats.cells_computed,
        "placement": str(placement),
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, harness.config_options("timevec/demo/demo.yaml"))
    parser.add_argument("--rounds", type=int, default=1, help="2: a second pass in the reverse order")
    args = parser.parse_args(argv)
    harness.output_block()
    logging.basicConfig(level=logging.WARNING)
    print(f"load before: {harness.load_note(full=True)}")
    s3 = start_s3_server(tempfile.mkdtemp(prefix="tvbench-s3-"))
    results: list[dict] = []
    try:
        order = ["1x2", "2x1"]
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                result = run_layout(name, args.config, args.overrides, s3)
                result["load"] = f"{harness.load_average():.1f}"
                results.append(result)
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()), flush=True)
    finally:
        s3.stop()

    def mean(name: str, key: str) -> float:
        values = [r[key] for r in results if r["layout"] == name]
        return sum(values) / len(values)

    print("\nmean over rounds             1x2      2x1    2x1/1x2")
    for key in ("fleet_s", "makespan_s", "ideal_s", "sum_train_s", "cells_s", "cells_startup_s", "cells_prepare_s",
                "cells_forward_s"):  # fmt: skip
        a, b = mean("1x2", key), mean("2x1", key)
        print(f"{key:<26} {a:8.1f} {b:8.1f} {b / a if a else float('nan'):8.3f}")
    total_a = mean("1x2", "fleet_s") + mean("1x2", "cells_s")
    total_b = mean("2x1", "fleet_s") + mean("2x1", "cells_s")
    print(f"{'fleet + cells':<26} {total_a:8.1f} {total_b:8.1f} {total_b / total_a:8.3f}   (goal ≤ 1.1)")
    print(f"load after: {harness.load_note(full=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
