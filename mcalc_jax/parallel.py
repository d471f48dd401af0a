"""Data parallelism with jit + NamedSharding: one 'data' mesh axis over every device of every host.

State is replicated and batches are split along their first axis; XLA inserts the gradient
all-reduce and computes BatchNorm statistics over the global batch. The same code runs on one CPU,
eight GPUs or several hosts (no pmap, which JAX keeps only in maintenance mode).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Launcher variables that report how many processes a job has; > 1 means a cluster is configured.
_PROCESS_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def maybe_initialize_distributed(
  coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
  """Calls `jax.distributed.initialize()` when a cluster is configured; a no-op on one host.

  A cluster is configured by the arguments (`config.distributed.*`), by `JAX_COORDINATOR_ADDRESS`,
  or by a launcher (SLURM, Open MPI, MPICH) that started more than one process; JAX then detects
  the remaining parameters itself. Must run before anything touches the devices.

  Returns:
    Whether this is a multi-process run.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  launched = any(int(os.environ.get(v, "1")) > 1 for v in _PROCESS_COUNT_VARIABLES)
  if not (explicit or launched):
    logging.info("No cluster configured: running as a single process.")
    return False
  jax.distributed.initialize(
    coordinator_address=coordinator_address or None,
    num_processes=num_processes or None,
    process_id=process_id if process_id >= 0 else None,
  )
  logging.info("Process %d of %d initialised.", jax.process_index(), jax.process_count())
  return True


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


def gather_rows(values: np.ndarray) -> np.ndarray:
  """Concatenates 1-D arrays of different lengths from all processes, in process order
  (the identity on one process)."""
  if jax.process_count() == 1:
    return values
  lengths = multihost_utils.process_allgather(np.array([len(values)]))
  padded = np.zeros(int(lengths.max()), values.dtype)
  padded[: len(values)] = values
  gathered = multihost_utils.process_allgather(padded)
  return np.concatenate([row[:n] for row, n in zip(gathered, lengths.ravel(), strict=True)])
