"""Joining a Ray cluster for ``--ray [ADDRESS]``: the address, its checks, and what the cluster must offer.

ADDRESS is what ``ray.init`` takes: ``HOST:PORT`` of a head node (``ray start --head`` prints it),
``ray://HOST:PORT`` for Ray Client, or ``auto`` (a cluster started on this machine). Left out,
``RAY_ADDRESS`` is used when set, and otherwise a local Ray is started in this process (and stopped
with it).

Everything that can be wrong is found before any LLM call, in one line each (UserError, exit 2):
an address nobody answers at (a TCP connect with a 3 s bound first: ``ray.init`` itself retries an
absent head for minutes), a work folder some node cannot see (every node reads the pools and the
driver writes the journals, so ``--out`` must be on storage all nodes mount at the same path), and
a vLLM role on a cluster with fewer GPUs than its tensor-parallel size.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from ..core.errors import UserError

ENV = "RAY_ADDRESS"
CONNECT_TIMEOUT = 3.0


def resolve(address: str | None) -> str | None:
    """The address ``--ray`` means: its own, else RAY_ADDRESS, else None (a local Ray in process)."""
    address = (address or "").strip() or os.environ.get(ENV, "").strip()
    return address or None


def check_address(address: str | None) -> None:
    """A head node answers at ``address`` (None and "auto" are left to ``ray.init``)."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray {address}: not a Ray address; give HOST:PORT of the head node "
                        f"(`ray start --head` prints it), ray://HOST:PORT, or leave it out for a local Ray")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"--ray {address}: no Ray cluster answers there ({reason}); start one with "
                        f"`ray start --head`, or leave ADDRESS out for a local Ray") from None


@contextlib.contextmanager
def connected(address: str | None):
    """Joined to the cluster (or a local Ray started) for the block; left afterwards. Ray's own logs
    and progress bars stay quiet: auto-evol reports progress itself."""
    import logging

    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError("--ray needs Ray Data: pip install 'auto-evol[ray]' (and 'ray[llm]' on GPU nodes for "
                        "vllm:MODEL roles)") from None
    # Ray Data's progress and plan lines would bury auto-evol's; they stay in Ray's session logs
    # (/tmp/ray/session_latest/logs).

    for name in ("ray", "ray.data"):   # a worker's error reaches the user as auto-evol's own one line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    check_address(address)
    ours = not ray.is_initialized()
    if ours:
        kwargs = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
        if address is None:   # a fresh Ray of this process ("auto" joins one started on this machine)
            address, kwargs["include_dashboard"] = "local", False
        ray.init(address=address, **kwargs)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A worker's own exception (an outage, a missing key) comes back as itself, not as a Ray wrapper
    # whose cause was lost in pickling: auto-evol then reports it in its one line and exit code.
    if hasattr(context, "raise_original_map_exception"):
        context.raise_original_map_exception = True
    try:
        yield
    finally:
        if ours:
            ray.shutdown()


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def check_shared(folder: Path, flag: str) -> None:
    """Every alive node sees ``folder`` (one task pinned to each node looks)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.isdir(path)

    nodes = alive_nodes()
    looks = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
             .remote(str(folder.resolve())) for node in nodes]
    for node, seen in zip(nodes, ray.get(looks)):
        if not seen:
            raise UserError(f"{flag}: {folder.resolve()} is not visible on Ray node {node.get('NodeManagerAddress')}; "
                            f"under --ray the work folder must be on storage every node mounts at the same path "
                            f"(NFS, a cluster file system)")


def gpus() -> float:
    """GPUs the cluster has in all."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
