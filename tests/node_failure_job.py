"""Run a build on a 4-node local Ray cluster and kill a worker node while a stage runs.

Used by tests/test_pipeline.py in its own process (a `ray.cluster_utils.Cluster` cannot
share a process with the session's local Ray). The head has no CPUs, so every actor runs
on a worker node; once `RUN/<step>/` shows the stage started, the node hosting one of its
actors is removed without warning. Ray restarts the actor on the spare node and retries
its batch. Prints one JSON line: which node was killed and what the build reported.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from lst_data.config import load_config
from pipelines.build_corpus import build_corpus


def main(corpus: str, out: str, watch_file: str, config_overrides: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    config = load_config(overrides=json.loads(config_overrides))
    result: dict = {}

    def run() -> None:
        try:
            report = build_corpus(corpus, out, config)
            result["rejects"] = len(report.rejects)
        except BaseException as err:  # reported to the test, which fails on it
            result["error"] = repr(err)

    thread = threading.Thread(target=run)
    thread.start()
    watched = Path(out) / watch_file
    killed = None
    deadline = time.monotonic() + 600
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        if watched.exists():
            time.sleep(1.0)
            actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "MapWorker" in a.class_name]
            nodes = {a.node_id for a in actors}
            victim = next((w for w in workers if w.node_id in nodes), None)
            if victim is not None:
                cluster.remove_node(victim, allow_graceful=False)
                killed = victim.node_id
        time.sleep(0.2)
    thread.join()
    print(json.dumps({"killed_node": killed, **result}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
