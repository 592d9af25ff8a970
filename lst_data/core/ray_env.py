"""Starting or joining Ray with the settings this project needs.

Local by default, loopback only, no dashboard, no usage stats: a laptop run must not
open ports to the network or phone home. A cluster is joined only when the user names an
address (config `ray.address` or RAY_ADDRESS).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

from lst_data.core.config import RayConfig

if TYPE_CHECKING:
    from lst_data.core.stage import Resources

_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # The data stages report their own progress; Ray's per-operator bars would duplicate it.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}


def _verbose() -> bool:
    return logging.getLogger("lst_data").isEnabledFor(logging.DEBUG)


def _quiet_ray_loggers() -> None:
    """Ray's notices (token auth, disabled progress bars) only with -v: a normal run shows our own lines."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.DEBUG if _verbose() else logging.ERROR)


def ensure_ray(config: RayConfig) -> ModuleType:
    """Initialise Ray once per process and return the `ray.data` module."""
    for key, value in _LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    import ray.data

    _quiet_ray_loggers()

    if not ray.is_initialized():
        if joins_cluster(config):
            ray.init(address=config.address or os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            # "local" always starts a fresh Ray: a bare init() would follow
            # /tmp/ray/ray_current_cluster to whatever cluster ran last, dead or alive.
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # same inputs -> same output order
    context.enable_progress_bars = False
    context.print_on_execution_start = False  # our stages print their own progress and summary
    _quiet_ray_loggers()  # ray.init may have configured its loggers again
    return ray.data


def joins_cluster(config: RayConfig) -> bool:
    return bool(config.address or os.environ.get("RAY_ADDRESS"))


def stage_pool_size(resources: Resources, config: RayConfig) -> int:
    """Concurrent workers for a stage: config.num_workers, or as many as the cluster's CPUs allow."""
    import ray

    if config.num_workers > 0:
        return config.num_workers
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_worker = max(resources.cpus * config.cpus_per_worker, 0.01)
    return max(1, int(cpus // per_worker))
