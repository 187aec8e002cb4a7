"""cocorecord's shard tasks on Ray: `cocorecord.py --engine ray [--ray_address HOST:PORT]`.

Each task writes one shard and its stats object exactly as a local worker process does (the same bytes, stored
under the final name only when whole), so a task that Ray retries after its node died, or a re-run, changes
nothing; the driver writes description.json last. Without --ray_address a local Ray is started for the run with
--jobs CPUs; with it, the tasks run on that cluster (`ray start --head` on one machine, `ray start --address`
on the others, or KubeRay), which must have mllib installed and reach the store.

Credentials never travel with a task: its arguments are the store's URL and endpoint settings, the entries and
the shard plan. Every worker builds its own S3 client from its own environment, boto3's default chain there:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) set where `ray start` runs, ~/.aws on the nodes,
or the instance's or pod's IAM role. A local Ray started for the run inherits this process's environment.
"""

from __future__ import annotations

import logging
import socket

from mllib import MissingExtra, MllibError, UsageError

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtra("ray", "--engine ray") from None
    return ray


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A one-line error, within timeout_s, when nothing answers at a Ray cluster address (HOST:PORT)."""
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray_address must be HOST:PORT of a Ray cluster's head (got {address!r})")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError | socket.timeout) else (e.strerror or str(e))
        raise MllibError(f"--ray_address {address}: no Ray cluster answers there ({why}); start one with "
                         "`ray start --head`, or leave --ray_address out to start a local Ray") from None


_context_key = None


def _shard(context, task: dict) -> dict:
    """One shard, in a Ray worker process: the conversion's Worker is built once per process and context."""
    global _context_key
    from mllib.records import convert

    key = (context[0].url, repr(context[1:]))  # a worker process may serve several conversions
    if convert._worker is None or _context_key != key:
        convert._init_worker(*context)
        _context_key = key
    return convert._write_shard(task)


def run_shards(conv, todo: list[dict]):
    """The shards' stats as their tasks finish, on the cluster at conv.ray_address or a local Ray."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        if conv.ray_address:
            check_address(conv.ray_address)
            ray.init(address=conv.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=conv.jobs, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        started = True
    try:
        task = ray.remote(max_retries=4)(_shard)  # a task whose worker or node dies runs again, elsewhere
        context = ray.put((conv.store, conv.entries, conv.classes_file, conv.crowd, conv.skip_bad))
        window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
        waiting = iter(todo)
        pending = {}
        for t in waiting:
            pending[task.remote(context, t)] = t
            if len(pending) >= window:
                break
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(done[0])
            try:
                stats = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                if isinstance(cause, MllibError):
                    raise MllibError(str(cause)) from None
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]
                raise MllibError(f"shard {t['key'].rsplit('/', 1)[-1]} failed on the Ray cluster: {first}; finished "
                                 "shards are kept: re-run the same command to resume") from None
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
                raise MllibError(f"shard {t['key'].rsplit('/', 1)[-1]} was lost with its Ray worker after the "
                                 f"retries ({type(e).__name__}); re-run the same command to resume") from None
            for nxt in waiting:
                pending[task.remote(context, nxt)] = nxt
                break
            yield stats
    finally:
        if started:
            ray.shutdown()
