"""Checkpoints of a run's workdir, and the trained classifier that evaluation and scoring load.

Layout of a workdir:
  config.json                    the run's configuration (restores the model without flags)
  checkpoints/<step>/model       params and BatchNorm statistics (all a classifier needs)
  checkpoints/<step>/optimizer   step and optimizer state (only for resuming)
  checkpoints/<step>/progress    JSON: early-stopping bookkeeping

Orbax keeps the latest checkpoint (resume) and the best by the validation metric (early stopping,
evaluation), with the current `preservation_policy` options, and saves asynchronously.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from mcalc_jax import models, parallel
from mcalc_jax.preprocess import PreprocessOptions, preprocess

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
_LOWER_IS_BETTER = ("loss",)


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Writes the run's configuration as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists() and path.read_text() != text:
    logging.warning("%s differs from this run's configuration; overwriting it.", path)
  path.write_text(text)


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Reads the configuration a run saved in `workdir`."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a training run?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def metric_is_better(metric: str, new: float, old: float | None) -> bool:
  """Whether `new` improves on `old` for `metric` (loss: lower is better; others: higher)."""
  if old is None or np.isnan(old):
    return not np.isnan(new)
  return new < old if metric in _LOWER_IS_BETTER else new > old


def create_manager(
  workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """A manager that keeps the latest checkpoint and the best by `config.early_stopping_metric`."""
  metric = config.early_stopping_metric
  lower_is_better = metric in _LOWER_IS_BETTER
  get_metric = functools.partial(_get_metric, metric)
  options = ocp.CheckpointManagerOptions(
    # best_fn/best_mode only answer `best_step()`; the preservation policy decides what is kept.
    best_fn=get_metric,
    best_mode="min" if lower_is_better else "max",
    preservation_policy=checkpoint_managers.AnyPreservationPolicy(
      [
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(
          get_metric_fn=get_metric,
          reverse=lower_is_better,
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    ),
    enable_async_checkpointing=bool(config.get("async_checkpointing", True)),
    save_interval_steps=0 if read_only else 1,
    read_only=read_only,
    create=not read_only,
  )
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def _get_metric(metric: str, metrics: Mapping[str, float]) -> float:
  return float(metrics[metric])


def save(
  manager: ocp.CheckpointManager,
  step: int,
  arrays: Mapping[str, Any],
  progress: Mapping[str, Any],
  metrics: Mapping[str, float] | None = None,
) -> None:
  """Starts an (async) save of pytrees `arrays` (by item name) plus JSON `progress` at `step`."""
  items = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
  manager.save(
    step,
    args=ocp.args.Composite(progress=ocp.args.JsonSave(dict(progress)), **items),
    metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
  )


def restore(
  manager: ocp.CheckpointManager, step: int, abstract_arrays: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Restores the items named in `abstract_arrays` and the progress JSON.

  `abstract_arrays` gives shapes, dtypes and shardings: ShapeDtypeStructs or template arrays.
  """
  items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_arrays.items()}
  restored = manager.restore(
    step, args=ocp.args.Composite(progress=ocp.args.JsonRestore(), **items)
  )
  return {name: restored[name] for name in abstract_arrays}, dict(restored["progress"])


# Images per forward pass on a CPU (see `inference_micro_batch`): the best of 8-64 per network,
# measured before and after in docs/performance.md.
CPU_INFERENCE_MICRO_BATCH = {"alexnet": 64, "resnet18": 16, "resnet34": 16}


def inference_micro_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """Images per forward pass inside one inference call (0: the whole batch at once).

  On a CPU, a large batch goes through the network in chunks whose activations stay in the
  caches (ResNet18 at 256 patches: about 1.5x faster in chunks of 16); accelerators and batches
  sharded over several devices take the whole batch. `config.inference_micro_batch` -1 (the
  default) picks per network and backend, 0 turns chunking off, N > 0 forces chunks of N.
  """
  value = int(config.get("inference_micro_batch", -1))
  return models.cpu_chunk(value, CPU_INFERENCE_MICRO_BATCH.get(config.model, 0), mesh.size)


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "micro_batch"))
def _probabilities(
  graphdef: nnx.GraphDef,
  variables: Mapping[str, nnx.State],
  images: jax.Array,
  options: PreprocessOptions,
  micro_batch: int = 0,
) -> jax.Array:
  """Softmax probabilities; with `micro_batch`, the batch runs in chunks of that many images."""
  model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])

  def forward(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(preprocess(x, options), train=False))

  n = images.shape[0]
  if not 0 < micro_batch < n:
    return forward(images)
  padded = jnp.pad(images, [(0, -n % micro_batch)] + [(0, 0)] * (images.ndim - 1))
  chunks = padded.reshape(-1, micro_batch, *images.shape[1:])
  return jax.lax.map(forward, chunks).reshape(padded.shape[0], -1)[:n]


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained patch classifier: model structure, variables and the run's configuration.

  `variables` holds 'params' and 'batch_stats', replicated over `mesh`. Inference is SPMD: with several
  processes, each calls `probabilities` on its own images, with the same shapes.
  """

  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  variables: Mapping[str, nnx.State]
  mesh: jax.sharding.Mesh

  @property
  def patch_size(self) -> int:
    """Side of the patches (at native resolution) the classifier takes."""
    return int(self.config.patch_size)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, S, S, 1] in [0, 1] -> float32 [N, num_classes] softmax, for this process's N.

    N is padded to a multiple of the local device count; each new N compiles once, so callers
    should use a fixed batch size.
    """
    padded, mask = parallel.pad_to_multiple(
      np.asarray(images, np.float32), jax.local_device_count()
    )
    batch = parallel.global_batch({"image": padded}, self.mesh)
    options = PreprocessOptions.from_config(self.config)
    probs = _probabilities(
      self.graphdef,
      self.variables,
      batch["image"],
      options,
      inference_micro_batch(self.config, self.mesh),
    )
    local = multihost_utils.global_array_to_host_local_array(
      probs, self.mesh, parallel.batch_sharded(self.mesh).spec
    )
    return np.asarray(local)[mask]


def abstract_variables(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[nnx.GraphDef, dict[str, nnx.State]]:
  """The model's graph definition and variable shapes, replicated over `mesh`, for restoring."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  sharding = parallel.replicated(mesh)

  def place(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return graphdef, jax.tree.map(place, {"params": params, "batch_stats": batch_stats})


def load_classifier(workdir: str | pathlib.Path, which: str = "best") -> Classifier:
  """The classifier saved in a run's `workdir`: the `best` (validation metric) or `latest` step."""
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  config = load_config(workdir)
  mesh = parallel.make_mesh()
  graphdef, abstract = abstract_variables(config, mesh)
  with create_manager(workdir, config, read_only=True) as manager:
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {pathlib.Path(workdir) / CHECKPOINT_DIR}")
    arrays, _ = restore(manager, step, {"model": abstract})
  logging.info("Loaded the %s classifier (step %d) from %s.", which, step, workdir)
  return Classifier(config, graphdef, arrays["model"], mesh)
