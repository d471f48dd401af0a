"""The cluster flags of the jobs that run on several processes (train, evaluate, cv, score).

Every such job joins a cluster the same way (README, "Several processes and SLURM"):
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each process, or nothing
under SLURM / Open MPI (detected); jobs with a training config also read `config.distributed.*`.
Single-process jobs (prepare, report, froc, demo) do not import this module, so they take no
cluster flags.
"""

from __future__ import annotations

import sys

import ml_collections
from absl import flags

from mcalc_jax.base import parallel, runtime

_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", "", "HOST:PORT of process 0 (default: detected under SLURM / Open MPI)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes of the job (0: detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (-1: detected).")
_CLUSTER_FLAGS = (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)


def cluster(config: ml_collections.ConfigDict | None = None) -> dict:
  """`runtime.start_job`'s arguments: the cluster flags given, else `config.distributed`."""
  launch = dict(config.distributed) if config is not None and "distributed" in config else {}
  return launch | {f.name: f.value for f in _CLUSTER_FLAGS if f.present}


def start_job(config: ml_collections.ConfigDict | None = None) -> None:
  """`runtime.start_job` on the cluster the flags (or config) name; a half-given one in one line."""
  try:
    runtime.start_job(**cluster(config))
  except parallel.LaunchError as e:
    sys.exit(f"{sys.argv[0]}: {e}")
