"""Data parallelism with jit + NamedSharding: one 'data' mesh axis over every device of every host.

State is replicated and batches are split along their first axis; XLA inserts the gradient
all-reduce and computes BatchNorm statistics over the global batch. The same code runs on one CPU,
eight GPUs or several hosts (no pmap, which JAX keeps only in maintenance mode).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost as ocp_multihost

DATA_AXIS = "data"
BARRIER_TIMEOUT_S = 7 * 24 * 3600  # a share of an archive may finish days before another

# Launcher variables that report how many processes a job has; > 1 means a cluster is configured.
_PROCESS_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class LaunchError(ValueError):
  """A cluster configured by halves: a coordinator without the process count or id."""


def maybe_initialize_distributed(
  coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
  """Calls `jax.distributed.initialize()` when a cluster is configured; a no-op on one host.

  A cluster is configured by the arguments (`--coordinator_address`, `--num_processes`,
  `--process_id` or `config.distributed.*`), by `JAX_COORDINATOR_ADDRESS`, or by a launcher
  (SLURM, Open MPI, MPICH) that started more than one process; under a launcher JAX detects the
  missing parameters itself, else a coordinator needs both the count and the id (LaunchError,
  rather than JAX's "Number of processes must be defined"). Must run before anything touches
  the devices.

  Returns:
    Whether this is a multi-process run.
  """
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  launched = any(int(os.environ.get(v, "1")) > 1 for v in _PROCESS_COUNT_VARIABLES)
  if not (address or launched):
    logging.info("No cluster configured: running as a single process.")
    return False
  known = {"num_processes": num_processes > 0, "process_id": process_id >= 0}
  missing = [name for name, ok in known.items() if not ok]
  if not launched and missing:
    raise LaunchError(
      f"coordinator {address} given without --{' or --'.join(missing)}: give both to every "
      "process, or launch under SLURM / Open MPI, which set them"
    )
  jax.distributed.initialize(
    coordinator_address=coordinator_address or None,
    num_processes=num_processes or None,
    process_id=process_id if process_id >= 0 else None,
  )
  logging.info("Process %d of %d initialised.", jax.process_index(), jax.process_count())
  return True


def is_writer() -> bool:
  """Whether this process writes a job's shared files (process 0; the others write nothing)."""
  return jax.process_index() == 0


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches `name` (a no-op on one process).

  A barrier of jax.distributed's coordination service (Orbax's), not a device collective: a
  process may wait there for hours (one share of an archive finished early), where XLA:CPU's
  collectives give up after 30 s.
  """
  if jax.process_count() > 1:
    ocp_multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all devices of all processes).

  Auto axis types: XLA propagates the batch sharding through the model, as in classic jit code.
  """
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of the train state: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of batches: split along the first (example) axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's share of a batch -> global arrays sharded over the mesh.

  Non-numeric fields (string ids) stay on the host and are dropped here.
  """
  sharding = batch_sharded(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in local_batch.items()
    if np.asarray(value).dtype.kind in "biuf"
  }


def pad_to_multiple(array: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads the first axis to a multiple of `multiple`; returns (padded, mask of real rows).

  Fixed batch shapes keep inference from recompiling on a last, short batch.
  """
  n = len(array)
  padded_n = -(-max(n, 1) // multiple) * multiple
  padding = [(0, padded_n - n)] + [(0, 0)] * (array.ndim - 1)
  mask = np.arange(padded_n) < n
  return np.pad(array, padding), mask


def gather_batches(parts: Sequence[np.ndarray]) -> np.ndarray:
  """Every process's rows of each of its batches (1-D, numbers or text), on every process.

  Each process holds the same number of batches and its share of a global batch is one block of
  slots after the blocks of the processes before it, so batch by batch and process by process
  gives the order of one process reading the whole batches. On one process: the concatenation.
  """
  if jax.process_count() == 1:
    return np.concatenate(parts)
  counts = multihost_utils.process_allgather(np.array([len(p) for p in parts], np.int64))
  rows = _allgather_ragged(np.concatenate(parts))
  starts = np.cumsum(counts, axis=1) - counts
  return np.concatenate(
    [
      rows[p][starts[p, b] : starts[p, b] + counts[p, b]]
      for b in range(counts.shape[1])
      for p in range(counts.shape[0])
    ]
  )


def _allgather_ragged(values: np.ndarray) -> list[np.ndarray]:
  """Each process's 1-D array (lengths differ), in process order, dtypes kept exactly."""
  if values.dtype.kind in "OUS":
    encoded = [str(v.decode() if isinstance(v, bytes) else v).encode() for v in values]
    lengths = _allgather_bytes(np.array([len(e) for e in encoded], np.int64))
    buffers = _allgather_bytes(np.frombuffer(b"".join(encoded), np.uint8))
    return [_split_text(b, n.view(np.int64)) for b, n in zip(buffers, lengths, strict=True)]
  return [b.view(values.dtype) for b in _allgather_bytes(values)]


def _allgather_bytes(values: np.ndarray) -> list[np.ndarray]:
  """Each process's array as its raw bytes (uint8), in process order: no float64 -> float32."""
  raw = np.ascontiguousarray(values).view(np.uint8)
  sizes = multihost_utils.process_allgather(np.array([raw.size], np.int64)).ravel()
  padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
  padded[: raw.size] = raw
  gathered = multihost_utils.process_allgather(padded)
  return [row[:n] for row, n in zip(gathered, sizes, strict=True)]


def _split_text(buffer: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  ends = np.cumsum(lengths)
  data = buffer.tobytes()
  return np.array([data[e - n : e].decode() for e, n in zip(ends, lengths, strict=True)], object)
