"""What every job does before its work: join the cluster if there is one, and cache compilations.

`start_job` is the first call of every `mcalc-*` job (and of `mcalc_jax.experiments.demo`): it initialises
`jax.distributed` when a cluster is configured (`parallel.maybe_initialize_distributed`), turns
on the persistent XLA compilation cache and logs this process's place and devices.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from mcalc_jax.base import parallel

_CACHE_VARIABLE = "MCALC_JAX_COMPILATION_CACHE"
_DEFAULT_CACHE = os.path.join("~", ".cache", "mcalc_jax", "xla")


def enable_compilation_cache() -> str | None:
  """Keeps compiled XLA programs on disk, so that a rerun of a job skips compilation.

  Each job compiles its networks at start-up (seconds per network and batch shape on a CPU, more
  on accelerators); with the cache a rerun, a resumed run or the next fold loads them instead.
  `JAX_COMPILATION_CACHE_DIR`, when set, is JAX's own setting and wins; else
  `MCALC_JAX_COMPILATION_CACHE` names the folder (default ~/.cache/mcalc_jax/xla), and 'off'
  disables the cache. Returns the folder in use, or None.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  directory = os.environ.get(_CACHE_VARIABLE, _DEFAULT_CACHE)
  if directory.lower() in ("", "off", "0", "false"):
    return None
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return directory


def start_job(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Joins the cluster (when configured), enables the compilation cache, logs the devices."""
  parallel.maybe_initialize_distributed(coordinator_address, num_processes, process_id)
  enable_compilation_cache()
  logging.info(
    "Process %d of %d; local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
