"""Data-parallel training: strategy selection, logical CPUs, chief-only writing.

`make_strategy` turns `DistributeConfig` into a `tf.distribute.Strategy`; models, optimiser,
metrics and the teacher are then created under `strategy.scope()` and Keras `fit` splits every
global batch across the replicas. The training step divides per-sample sums by the *global* batch
and Keras 3 all-reduces gradients by SUM, so N replicas take exactly the step one device takes on
the whole batch, except that batch norm normalises each replica's share with that share's
statistics unless `model.sync_batchnorm` is set (the moving statistics are averaged across
replicas after every step, so all copies stay equal). The attack's random start is drawn per
replica, so it differs from a one-device run's numbers but not in distribution.

With several workers only the chief writes into `output.dir`. Every other worker runs the same
code against its own scratch run directory (`worker_run_dir`), as Keras's multi-worker guides do:
the same callbacks run everywhere, so no worker skips a step the others perform. The scratch
directory has a fixed name under the system temporary folder, so a restarted worker resumes from
it; it is deleted when the run completes.

Example:
    >>> strategy = make_strategy(DistributeConfig(strategy="mirrored", logical_cpus=2))
    >>> describe_batch(64, strategy)
    'global batch 64 = 2 replicas x 32'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import tensorflow as tf

log = logging.getLogger(__name__)

# Debugging and tests: keep non-chief workers' scratch run directories instead of deleting them.
KEEP_WORKER_DIR_ENV = "DGAD_TF_KEEP_WORKER_DIR"


class DistributeError(ValueError):
    """The distribution settings cannot be honoured (devices, TF_CONFIG, batch split)."""


def configure_logical_cpus(n: int) -> None:
    """Split the physical CPU into `n` logical devices, so `MirroredStrategy` can run on a CPU.

    Must be called before TensorFlow initialises its devices (before the first op or device
    query of the process). Calling it again with the same `n` afterwards is a no-op.

    Args:
        n: number of logical CPU devices, >= 1.

    Raises:
        DistributeError: `n` is not a positive integer, or the devices are already initialised
            with another layout.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DistributeError(
            f"`distribute.logical_cpus` must be a positive integer; received logical_cpus={n!r}"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as err:
        raise DistributeError(
            f"cannot split the CPU into distribute.logical_cpus={n} devices: TensorFlow has "
            "already initialised its devices in this process. Configure logical CPUs before "
            f"any TensorFlow op runs (e.g. first thing in the program). ({err})"
        ) from err


def read_tf_config(text: str | None = None) -> dict:
    """Parse and check a `TF_CONFIG` cluster description.

    The standard form is
    `{"cluster": {"worker": ["host:port", ...], "chief": ["host:port"]}, "task": {"type":
    "worker", "index": 0}}`; "chief" is optional (worker 0 is then the chief).

    Args:
        text: the JSON text. Defaults to None (the `TF_CONFIG` environment variable).

    Returns:
        The parsed dict.

    Raises:
        DistributeError: naming what is missing or malformed.
    """
    if text is None:
        text = os.environ.get("TF_CONFIG")
    if not text:
        raise DistributeError(
            "distribute.strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\''
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err}); received {text!r}") from None
    if not isinstance(spec, dict):
        raise DistributeError(f"TF_CONFIG must be a JSON object; received {text!r}")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f"TF_CONFIG needs a non-empty `cluster` mapping; received {text!r}")
    for job, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and ":" in a for a in addresses)
        ):
            raise DistributeError(
                f"TF_CONFIG `cluster.{job}` must be a list of 'host:port' "
                f"strings; received {addresses!r}"
            )
    if "chief" in cluster and len(cluster["chief"]) != 1:
        raise DistributeError(
            f"TF_CONFIG `cluster.chief` must hold exactly one address; "
            f"received {cluster['chief']!r}"
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(
            f"TF_CONFIG needs `task` with `type` and `index`; received task={task!r}"
        )
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise DistributeError(
            f"TF_CONFIG `task.type` must be one of the cluster's jobs "
            f"({', '.join(cluster)}); received type={kind!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise DistributeError(
            f"TF_CONFIG `task.index` must be in [0, {len(cluster[kind])}) for "
            f"job {kind!r}; received index={index!r}"
        )
    return spec


def make_strategy(distribute_cfg) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` that `DistributeConfig` describes.

    "auto" mirrors over all GPUs when more than one is visible and otherwise uses the default
    (single-device) strategy; "none" is always the default strategy; "mirrored" mirrors over
    `devices`, else the logical CPUs when `logical_cpus` > 0, else all GPUs (the CPU when there
    are none); "multi_worker" is `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`.
    Logical CPUs are configured first, so call this before anything else touches TensorFlow.

    Args:
        distribute_cfg: a `dgad_tf.config.DistributeConfig`.

    Returns:
        The strategy; create models and the optimiser under its `scope()`.

    Raises:
        DistributeError: logical CPUs requested too late, or TF_CONFIG missing or malformed.
    """
    kind = distribute_cfg.strategy
    if distribute_cfg.logical_cpus > 0:
        configure_logical_cpus(distribute_cfg.logical_cpus)
    if kind == "multi_worker":
        read_tf_config()
        # The resolver reads TF_CONFIG itself; the check above only gives clearer errors.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        devices = list(distribute_cfg.devices)
        if not devices and distribute_cfg.logical_cpus > 0:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices or None)
    elif kind == "auto" and len(tf.config.list_physical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif kind in ("auto", "none"):
        if distribute_cfg.logical_cpus > 0 and kind == "auto":
            log.warning(
                "distribute.logical_cpus=%d has no effect with distribute.strategy=auto "
                "and fewer than 2 GPUs; set distribute.strategy=mirrored to use them",
                distribute_cfg.logical_cpus,
            )
        strategy = tf.distribute.get_strategy()
    else:
        raise DistributeError(
            f"`distribute.strategy` must be one of auto, none, mirrored, "
            f"multi_worker; received strategy={kind!r}"
        )
    log.info(
        "distribution: %s with %d replica(s)%s",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        _worker_suffix(strategy),
    )
    return strategy


def _task(strategy) -> tuple[str | None, int | None, dict]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None, {}
    spec = resolver.cluster_spec().as_dict()
    return resolver.task_type, resolver.task_id, spec


def _worker_suffix(strategy) -> str:
    kind, index, spec = _task(strategy)
    if not spec:
        return ""
    workers = sum(len(addresses) for addresses in spec.values())
    return f" across {workers} workers; this is {kind} {index}"


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` spans more than one worker process."""
    _, _, spec = _task(strategy)
    return sum(len(addresses) for addresses in spec.values()) > 1


def is_chief(strategy=None) -> bool:
    """Whether this process writes the run's files: the chief, worker 0 without a chief, or
    any single-worker run.

    Args:
        strategy: a strategy. Defaults to None (the current one).
    """
    strategy = strategy or tf.distribute.get_strategy()
    kind, index, spec = _task(strategy)
    if kind is None:
        return True
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)


def worker_run_dir(run_dir: str | os.PathLike, strategy) -> pathlib.Path:
    """Where this process writes: `run_dir` on the chief, a scratch folder on other workers.

    The scratch folder's name is fixed by the absolute `run_dir` and the task, so a restarted
    worker finds its resumable state again.

    Args:
        run_dir: the run's `output.dir`.
        strategy: the run's strategy.
    """
    run_dir = pathlib.Path(run_dir)
    if is_chief(strategy):
        return run_dir
    kind, index, _ = _task(strategy)
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return pathlib.Path(tempfile.gettempdir()) / "dgad_tf_workers" / f"{key}-{kind}-{index}"


def remove_worker_run_dir(path: pathlib.Path, strategy) -> None:
    """Delete a non-chief worker's scratch run directory after a completed run (the chief's is
    kept). Setting the environment variable `DGAD_TF_KEEP_WORKER_DIR=1` keeps it, for debugging."""
    if is_chief(strategy):
        return
    if os.environ.get(KEEP_WORKER_DIR_ENV, "") not in ("", "0"):
        log.info("keeping worker scratch directory %s (%s is set)", path, KEEP_WORKER_DIR_ENV)
        return
    shutil.rmtree(path, ignore_errors=True)


def check_global_batch(batch_size: int, strategy) -> int:
    """The per-replica batch of a global `batch_size`; it must split evenly across replicas.

    Args:
        batch_size: the global batch (`train.batch_size`).
        strategy: the run's strategy.

    Returns:
        `batch_size // num_replicas_in_sync`.

    Raises:
        DistributeError: naming `train.batch_size` when it does not divide evenly.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise DistributeError(
            f"`train.batch_size` is the global batch and must be divisible by the "
            f"{replicas} replicas in sync; received train.batch_size={batch_size} (try "
            f"{max(replicas, batch_size // replicas * replicas)})"
        )
    return batch_size // replicas


def describe_batch(batch_size: int, strategy) -> str:
    """'global batch 64 = 2 replicas x 32' for a run's log."""
    replicas = strategy.num_replicas_in_sync
    return (
        f"global batch {batch_size} = {replicas} replica{'s' if replicas > 1 else ''} "
        f"x {batch_size // replicas}"
    )


def distribute_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with DATA auto-sharding across workers.

    Every worker builds the same seeded pipeline; Keras splits each global batch into per-worker
    batches and DATA sharding hands worker i the i-th of them, so the workers together see each
    global batch exactly once, as one device would. (FILE sharding does not apply: the images
    come from in-memory arrays.) Within a worker, `MirroredStrategy` splits the batch again.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_workers_agree(strategy, value: int, what: str) -> None:
    """Raise unless every worker holds the same integer `value` (e.g. completed epochs).

    A no-op on a single worker. On several, a collective gathers the values, so every worker must
    call it at the same point.

    Raises:
        DistributeError: the workers disagree.
    """
    if not is_multi_worker(strategy):
        return
    gathered = strategy.gather(strategy.run(lambda: tf.constant([int(value)], tf.int64)), axis=0)
    values = sorted(set(int(v) for v in gathered.numpy()))
    if len(values) > 1:
        raise DistributeError(
            f"the workers disagree on {what} (values {values}; this worker has {value}). "
            "Non-chief workers resume from their scratch run directories under "
            f"{pathlib.Path(tempfile.gettempdir()) / 'dgad_tf_workers'}; restart every worker on "
            "the machine it ran on, or start over in a new output.dir"
        )
