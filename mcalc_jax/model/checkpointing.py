"""Checkpoints of a run's workdir: its configuration, and Orbax's latest and best checkpoints.

Layout of a workdir:
  config.json                    the run's configuration (restores the model without flags)
  checkpoints/<step>/model       params and BatchNorm statistics (all a classifier needs)
  checkpoints/<step>/optimizer   step and optimizer state (only for resuming)
  checkpoints/<step>/progress    JSON: early-stopping bookkeeping

Orbax keeps the latest checkpoint (resume) and the best by the validation metric (early stopping,
evaluation), with the current `preservation_policy` options, and saves asynchronously. The trained
classifier that evaluation and scoring load is `mcalc_jax.model.inference.load_classifier`.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from input_pipeline import patches
from mcalc_jax.base import metrics

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


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
  return ml_collections.ConfigDict(_upgraded(json.loads(path.read_text())))


# Fields of configs saved before they moved: old name -> (group, new name).
_MOVED_FIELDS = {
  "conv_batch_chunk": ("cpu_tuning", "conv_chunk"),
  "inference_micro_batch": ("cpu_tuning", "inference_chunk"),
}


def _upgraded(fields: dict[str, Any]) -> dict[str, Any]:
  """A saved configuration with fields that have moved since put where the code reads them; a
  run trained before patches had millimetres trained on native pixels."""
  for old, (group, new) in _MOVED_FIELDS.items():
    if old in fields:
      fields.setdefault(group, {})[new] = fields.pop(old)
  fields.setdefault("field_of_view_mm", patches.NATIVE_PIXELS)
  return fields


def create_manager(
  workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """A manager that keeps the latest checkpoint and the best by `config.early_stopping_metric`."""
  metric = config.early_stopping_metric
  lower_is_better = not metrics.REGISTRY[metric].higher_is_better
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


def _get_metric(metric: str, values: Mapping[str, float]) -> float:
  return float(values[metric])


def save(
  manager: ocp.CheckpointManager,
  step: int,
  arrays: Mapping[str, Any],
  progress: Mapping[str, Any],
  validation: Mapping[str, float] | None = None,
) -> None:
  """Starts an (async) save of pytrees `arrays` (by item name) plus JSON `progress` at `step`;
  `validation` holds the metrics Orbax ranks checkpoints by."""
  items = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
  manager.save(
    step,
    args=ocp.args.Composite(progress=ocp.args.JsonSave(dict(progress)), **items),
    metrics=None if validation is None else {k: float(v) for k, v in validation.items()},
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
