"""A Ray head on loopback for users trying the cluster path (`make cluster-up/-down/submit`).

`ray start --head` alone binds the machine's address, turns token auth on with no token
on the client side, and takes default ports that another Ray on the same machine may
hold. This module starts a head that listens on 127.0.0.1 only, on free ports, with a
token written under the state directory, and the project's venv first on PATH so that a
submitted `python -m pipelines.build_corpus` finds lst-data. `submit` passes the same token
to `ray job submit`. Tests use the same code path.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import click

STATE_FILE = "head.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Head:
    pid: int
    gcs_address: str
    dashboard_url: str
    token_path: str
    temp_dir: str

    def client_env(self) -> dict[str, str]:
        """Environment for `ray job submit` / `ray.init` against this head."""
        return {**os.environ, **auth_env(Path(self.token_path))}


def auth_env(token_path: Path) -> dict[str, str]:
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_head(state_dir: Path, num_cpus: int | None = None, timeout: float = 120.0) -> Head:
    """Start a loopback head (its own process group) and wait until jobs can be submitted."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    token_path = state_dir / "auth_token"
    if not token_path.exists():
        token_path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        token_path.chmod(0o600)
    # Unix socket paths are limited to ~107 bytes: keep the session dir short, under /tmp.
    temp_dir = Path("/tmp") / f"lstray-{secrets.token_hex(4)}"
    gcs_port, dashboard_port = free_port(), free_port()
    ports = {name: str(free_port()) for name in (
        "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
        "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port")}
    command = [
        _ray_bin(), "start", "--head", "--block", "--disable-usage-stats", "--include-dashboard=true",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
        *[f"{flag}={port}" for flag, port in ports.items()],
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    env = {**os.environ, **auth_env(token_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (state_dir / "head.log").open("ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(process.pid, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", str(token_path), str(temp_dir))
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(head), indent=2) + "\n", encoding="utf-8")
    _wait_for_jobs_api(head, process, timeout)
    return head


def _wait_for_jobs_api(head: Head, process: subprocess.Popen, timeout: float) -> None:
    token = Path(head.token_path).read_text(encoding="utf-8").strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray head exited with {process.returncode}; see head.log beside {head.token_path}")
        request = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    stop_head(head)
    raise TimeoutError(f"ray head did not serve the jobs API within {timeout:.0f} s")


def load_head(state_dir: Path) -> Head:
    path = state_dir / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no head recorded in {path}: run `make cluster-up` first")
    return Head(**json.loads(path.read_text(encoding="utf-8")))


def stop_head(head: Head, timeout: float = 30.0) -> None:
    """Stop the head's whole process group (`ray start --block` stops its children on SIGTERM)."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(head.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(head.pid, signal.SIGKILL)


def submit_command(head: Head, entrypoint: list[str], working_dir: Path) -> list[str]:
    """The `ray job submit` argument list for `entrypoint` against `head`."""
    return [_ray_bin(), "job", "submit", "--address", head.dashboard_url, "--working-dir", str(working_dir), "--", *entrypoint]


@click.group()
def main() -> None:
    """Manage a loopback Ray head for trying the cluster path."""


@main.command("up")
@click.option("--state-dir", default="build/ray", show_default=True, type=click.Path(path_type=Path))
@click.option("--num-cpus", type=int, default=None)
def up(state_dir: Path, num_cpus: int | None) -> None:
    head = start_head(state_dir, num_cpus)
    click.echo(f"ray head on {head.gcs_address}, jobs API {head.dashboard_url} (token: {head.token_path})")
    click.echo(f"submit with: make submit RAY_ADDRESS={head.dashboard_url} CORPUS=... OUT=...")


@main.command("down")
@click.option("--state-dir", default="build/ray", show_default=True, type=click.Path(path_type=Path))
def down(state_dir: Path) -> None:
    head = load_head(state_dir)
    stop_head(head)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    click.echo(f"stopped ray head {head.gcs_address}")


@main.command("submit", context_settings={"ignore_unknown_options": True})
@click.option("--state-dir", default="build/ray", show_default=True, type=click.Path(path_type=Path))
@click.option("--address", default=None, help="Jobs API URL; default: the head in --state-dir (or RAY_ADDRESS).")
@click.argument("entrypoint", nargs=-1, type=click.UNPROCESSED, required=True)
def submit(state_dir: Path, address: str | None, entrypoint: tuple[str, ...]) -> None:
    """Submit ENTRYPOINT (e.g. python -m pipelines.build_corpus ...) with this repo as working dir."""
    head = load_head(state_dir)
    if address or os.environ.get("RAY_ADDRESS"):
        head = Head(head.pid, head.gcs_address, address or os.environ["RAY_ADDRESS"], head.token_path, head.temp_dir)
    command = submit_command(head, list(entrypoint), Path.cwd())
    sys.exit(subprocess.run(command, env=head.client_env(), check=False).returncode)


if __name__ == "__main__":
    main()
