"""Run a build on a 4-node local Ray cluster and kill a worker node while a stage runs.

Used by tests/test_pipeline.py in its own process (a `ray.cluster_utils.Cluster` cannot
share a process with the session's local Ray). The head has no CPUs, so every task runs
on a worker node; once the watched path shows the stage wrote its first partition, a node
running one of the build's tasks is removed without warning. Ray retries the lost tasks on
the spare node. Prints one line, NODE_FAILURE_RESULT + JSON: the node killed, the node
addresses (all loopback) and what the build reported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

# Loopback only: without these a Cluster's nodes bind the machine's external address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["LST_DATA_NO_PROGRESS"] = "1"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_tasks  # noqa: E402

from lst_data.config import load_config  # noqa: E402
from lst_data.core.runner import TASK_NAME_PREFIX  # noqa: E402
from pipelines.build_corpus import build_corpus  # noqa: E402

RESULT_MARKER = "NODE_FAILURE_RESULT "
LOOPBACK = "127.0.0.1"


def main(corpus: str, out: str, watch_file: str, config_overrides: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK})
    workers = [cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    # The build joins this cluster as a user's would (ray.address set).
    overrides = json.loads(config_overrides)
    overrides.setdefault("ray", {})["address"] = cluster.address
    config = load_config(overrides=overrides)
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
            running = [t for t in list_tasks(filters=[("state", "=", "RUNNING")])
                       if (t.name or "").startswith(TASK_NAME_PREFIX)]
            nodes = {t.node_id for t in running}
            victim = next((w for w in workers if w.node_id in nodes), None)
            if victim is not None:
                cluster.remove_node(victim, allow_graceful=False)
                killed = victim.node_id
        time.sleep(0.2)
    thread.join()
    print(RESULT_MARKER + json.dumps({"killed_node": killed, "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes()}), **result}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
