"""Training loop: cross-entropy + Adam, data parallel with jit, early stopping, exact resume.

The model runs as a functional loop (Flax's advice for small models): `nnx.split` once, then
jitted pure functions over (graphdef static, state) that `nnx.merge` inside the trace. State is
replicated and batches are sharded over a ('data',) mesh, so BatchNorm statistics and gradients
cover the global batch. Dropout keys are `fold_in(seed, step)` and the data source replays from any
step, so a run restarted from its latest checkpoint ends with the same parameters as one that was
never interrupted.

Library entry: `train_and_evaluate(config, workdir, data=None)`; `mcalc-train` is a thin CLI.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import parameter_overview
from flax import nnx, traverse_util

from input_pipeline import patch_data
from mcalc_jax.base import metrics, parallel, writers
from mcalc_jax.model import checkpointing, inference, networks
from mcalc_jax.model.preprocess import PreprocessOptions, preprocess


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes. The model structure (graphdef) stays outside, static."""

  step: jax.Array  # number of updates applied
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState

  def variables(self) -> dict[str, nnx.State]:
    """The model variables, as `inference.Classifier` and the 'model' checkpoint item hold them."""
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[nnx.GraphDef, optax.GradientTransformation, TrainState]:
  """Initialises the model from `config.seed`, or from the run `config.init_from` names (its best
  checkpoint: fine-tuning, e.g. after pretraining on the synthetic cohort), and Adam afresh;
  replicated over `mesh`."""
  tx = optax.adam(config.learning_rate)
  graphdef, _ = inference.abstract_variables(config, mesh)
  pretrained = _pretrained(config, graphdef)

  def init(pretrained: Any) -> TrainState:
    if pretrained is not None:  # arguments, not constants: large models compile quickly
      params, batch_stats = pretrained["params"], pretrained["batch_stats"]
    else:
      model = networks.create_model(config, nnx.Rngs(config.seed))
      _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(pretrained)
  return graphdef, tx, state


def _pretrained(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef) -> Any:
  """The variables of the run `config.init_from` (None without one); it must be the same model."""
  source = config.get("init_from", "")
  if not source:
    return None
  classifier = inference.load_classifier(source, "best")
  if classifier.graphdef != graphdef:
    raise ValueError(
      f"init_from={source} holds a {classifier.config.model} whose structure differs from this "
      f"run's {config.model} (front end, classes and input channels must match)"
    )
  return classifier.variables


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  *,
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  options: PreprocessOptions,
  seed: int,
  network: str,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on the mean cross-entropy of `batch`; returns the new state and batch metrics."""
  dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
  images = preprocess(batch["image"], options)
  # Merging inside the trace costs nothing per step; nnx.value_and_grad differentiates the Params
  # and carries the BatchNorm statistics' updates back into `model`.
  model = nnx.merge(graphdef, state.params, state.batch_stats)

  def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
    logits = networks.call(model, network, images, train=True, dropout_key=dropout_key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = TrainState(
    state.step + 1,
    optax.apply_updates(state.params, updates),
    nnx.state(model, nnx.BatchStat),
    opt_state,
  )
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
  return new_state, {"loss": loss, "accuracy": accuracy}


def make_train_step(
  config: ml_collections.ConfigDict,
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` jit-compiled for `mesh`: state donated and replicated, batch sharded."""
  step = functools.partial(
    train_step,
    graphdef=graphdef,
    tx=tx,
    options=PreprocessOptions.from_config(config),
    seed=config.seed,
    network=config.model,
  )
  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def validation_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """AUC of the validation split; NaN when it lacks a class, so early stopping waits it out."""
  try:
    return metrics.roc_auc(labels, scores, split="validation")
  except metrics.UndefinedMetricError:
    return float("nan")


def validate(
  classifier: inference.Classifier, batches: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, float]:
  """Validation loss, accuracy (threshold 0.5) and AUC over all processes' unmasked examples."""
  predictions = inference.predict(classifier, batches)
  prob, label = predictions["prob"].astype(np.float64), predictions["label"].astype(np.int64)
  p_true = np.clip(np.where(label == 1, prob, 1.0 - prob), 1e-7, 1.0)
  return {
    "loss": float(-np.log(p_true).mean()),
    "accuracy": float(((prob >= 0.5) == (label == 1)).mean()),
    "auc": validation_auc(label, prob),
    "num_examples": float(len(label)),
  }


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When to stop, log, evaluate and checkpoint, in steps; -1 fields resolved from the data."""

  num_steps: int
  steps_per_epoch: int
  eval_every: int
  checkpoint_every: int
  log_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, data: Any) -> Schedule:
    steps_per_epoch = data.num_examples(config.train_split) // config.batch_size
    if steps_per_epoch == 0:
      raise ValueError(
        f"split {config.train_split!r} has fewer examples than one batch ({config.batch_size})"
      )
    num_steps = (
      config.num_train_steps
      if config.num_train_steps > 0
      else (config.num_epochs * steps_per_epoch)
    )
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    checkpoint_every = (
      config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else eval_every
    )
    return cls(num_steps, steps_per_epoch, eval_every, checkpoint_every, config.log_every_steps)

  def is_due(self, step: int, every: int) -> bool:
    return step % every == 0 or step == self.num_steps


@dataclasses.dataclass
class EarlyStopping:
  """Best validation metric so far and evaluations since it improved; saved with checkpoints."""

  metric: str
  patience: int  # evaluations without improvement before stopping; <= 0 never stops
  best_value: float | None = None
  best_step: int | None = None
  evals_without_improvement: int = 0

  def update(self, step: int, value: float) -> None:
    """Records an evaluation. A tie moves the best step (as Orbax's BestN keeps the later
    checkpoint) but does not reset the patience."""
    improved = metrics.is_better(self.metric, value, self.best_value)
    if improved or value == self.best_value:
      self.best_value, self.best_step = value, step
    self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1

  @property
  def should_stop(self) -> bool:
    return 0 < self.patience <= self.evals_without_improvement

  def progress(self) -> dict[str, Any]:
    """The counters a checkpoint keeps; metric and patience come from the run's config."""
    return {k: getattr(self, k) for k in ("best_value", "best_step", "evals_without_improvement")}


class ProgressLog:
  """Logs steps/s, samples/s and ETA every `log_every` steps, with the mean train metrics."""

  def __init__(self, schedule: Schedule, start_step: int, batch_size: int):
    self._schedule, self._batch_size = schedule, batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._metrics: list[dict[str, jax.Array]] = []

  def record(
    self, step: int, step_metrics: dict[str, jax.Array], writer: writers.MetricWriter
  ) -> None:
    self._metrics.append(step_metrics)
    if not self._schedule.is_due(step, self._schedule.log_every):
      return
    now = time.perf_counter()
    steps_per_sec = (step - self._last_step) / (now - self._last_time)
    means = {k: float(np.mean(v)) for k, v in jax.device_get(_stack(self._metrics)).items()}
    eta_min = (self._schedule.num_steps - step) / steps_per_sec / 60
    logging.info(
      "step %d/%d: %.2f steps/s, ETA %.1f min",
      step,
      self._schedule.num_steps,
      steps_per_sec,
      eta_min,
    )
    writer.write_scalars(
      step,
      {f"train/{k}": v for k, v in means.items()}
      | {"steps_per_sec": steps_per_sec, "samples_per_sec": steps_per_sec * self._batch_size},
    )
    self._last_step, self._last_time, self._metrics = step, now, []


def _stack(records: list[dict[str, jax.Array]]) -> dict[str, list[jax.Array]]:
  return {k: [r[k] for r in records] for k in records[0]}


def _raise_if_not_finite(step: int, loss: jax.Array) -> None:
  value = float(loss)
  if not np.isfinite(value):
    raise FloatingPointError(
      f"training loss is {value} at step {step}; stopping (lower the learning rate or check the "
      "input batches)."
    )


def _check_batch_shape(batch: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> None:
  expected = (config.patch_size, config.patch_size, 1)
  if tuple(np.shape(batch["image"])[1:]) != expected:
    raise ValueError(
      f"train batches hold {np.shape(batch['image'])[1:]} images but config.patch_size gives "
      f"{expected}; set --config.patch_size to the dataset's patch size."
    )


@dataclasses.dataclass(frozen=True)
class _Run:
  """What stays fixed while a run trains."""

  config: ml_collections.ConfigDict
  data: Any
  mesh: jax.sharding.Mesh
  schedule: Schedule
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  manager: ocp.CheckpointManager
  writer: writers.MetricWriter


def with_data_geometry(config: ml_collections.ConfigDict, data: Any) -> ml_collections.ConfigDict:
  """The config with `field_of_view_mm` the data's (None) or checked against it, so that a run
  records the millimetres scoring must tile at."""
  data_fov = float(data.field_of_view_mm)
  if config.field_of_view_mm is not None and config.field_of_view_mm != data_fov:
    raise ValueError(
      f"config.field_of_view_mm={config.field_of_view_mm} but the dataset's patches cover "
      f"{data_fov} mm (0: native pixels); leave it unset to take the dataset's"
    )
  config = copy.deepcopy(config)
  with config.unlocked():
    config.field_of_view_mm = data_fov
  return config


def _checkpoint_arrays(state: TrainState) -> dict[str, Any]:
  """'model' is all a classifier needs; 'optimizer' only matters for resuming."""
  return {"model": state.variables(), "optimizer": {"step": state.step, "opt": state.opt_state}}


def _restore_or_start(
  run: _Run, state: TrainState, early_stopping: EarlyStopping
) -> tuple[TrainState, EarlyStopping]:
  """Continues from the latest checkpoint when there is one."""
  step = run.manager.latest_step()
  if step is None:
    return state, early_stopping
  arrays, progress = checkpointing.restore(run.manager, step, _checkpoint_arrays(state))
  logging.info("Resuming from the checkpoint of step %d.", step)
  model, optimizer = arrays["model"], arrays["optimizer"]
  restored = TrainState(optimizer["step"], model["params"], model["batch_stats"], optimizer["opt"])
  return restored, dataclasses.replace(early_stopping, **progress)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data: Any = None
) -> dict[str, Any]:
  """Trains `config.model`, evaluating and checkpointing into `workdir`; resumes if it can.

  Args:
    config: the run configuration (configs/default.py).
    workdir: checkpoints, config.json and TensorBoard events go here.
    data: a PatchData source (docs/design.md); default: `patch_data.create_data(config)`.

  Returns:
    A summary: the step this invocation started from and ended at, the best step and metric
    value, whether early stopping fired, and the last validation metrics of this invocation.
  """
  if config.batch_size % jax.device_count():
    raise ValueError(
      f"batch_size {config.batch_size} is not a multiple of the {jax.device_count()} devices"
    )
  data = patch_data.create_data(config) if data is None else data
  config = with_data_geometry(config, data)
  mesh = parallel.make_mesh()
  schedule = Schedule.from_config(config, data)
  graphdef, tx, state = create_train_state(config, mesh)
  checkpointing.save_config(config, workdir)
  parameter_overview.log_parameter_overview(nnx.to_pure_dict(state.params), msg=config.model)
  writer = writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  try:
    writer.write_hparams(traverse_util.flatten_dict(config.to_dict(), sep="."))
    with checkpointing.create_manager(workdir, config) as manager:
      run = _Run(config, data, mesh, schedule, graphdef, tx, manager, writer)
      early_stopping = EarlyStopping(config.early_stopping_metric, config.early_stopping_patience)
      summary = _train_loop(run, *_restore_or_start(run, state, early_stopping))
      manager.wait_until_finished()
  finally:
    writer.close()
  return summary


def _train_loop(run: _Run, state: TrainState, early_stopping: EarlyStopping) -> dict[str, Any]:
  """Steps from the state's step to the schedule's end or early stopping."""
  config, schedule = run.config, run.schedule
  start_step = step = int(state.step)
  step_fn = make_train_step(config, run.graphdef, run.tx, run.mesh)
  progress = ProgressLog(schedule, start_step, config.batch_size)
  validation: dict[str, float] = {}
  batches = run.data.train_batches(start_step)
  pending_loss = None
  if step < schedule.num_steps and not early_stopping.should_stop:
    logging.info("Training steps %d..%d; the first step compiles.", step + 1, schedule.num_steps)
  while step < schedule.num_steps and not early_stopping.should_stop:
    batch = next(batches)
    if step == start_step:
      _check_batch_shape(batch, config)
    state, step_metrics = step_fn(state, parallel.global_batch(batch, run.mesh))
    if pending_loss is not None:  # checked one step late, so the host never waits on the device
      _raise_if_not_finite(step, pending_loss)
    step, pending_loss = step + 1, step_metrics["loss"]
    progress.record(step, step_metrics, run.writer)
    evaluate_now = schedule.is_due(step, schedule.eval_every)
    if not (evaluate_now or schedule.is_due(step, schedule.checkpoint_every)):
      continue
    _raise_if_not_finite(step, pending_loss)  # never checkpoint a diverged state
    if evaluate_now:
      classifier = inference.Classifier(config, run.graphdef, state.variables(), run.mesh)
      validation = validate(classifier, run.data.eval_batches(config.eval_split))
      early_stopping.update(step, validation[config.early_stopping_metric])
      run.writer.write_scalars(step, {f"validation/{k}": v for k, v in validation.items()})
    checkpointing.save(
      run.manager,
      step,
      _checkpoint_arrays(state),
      early_stopping.progress(),
      validation if evaluate_now else None,
    )
  if early_stopping.should_stop:
    logging.info(
      "Early stopping at step %d: best %s %.4f at step %s.",
      step,
      early_stopping.metric,
      early_stopping.best_value,
      early_stopping.best_step,
    )
  run.writer.flush()
  return {
    "start_step": start_step,
    "step": step,
    "best_step": early_stopping.best_step,
    "best_value": early_stopping.best_value,
    "stopped_early": early_stopping.should_stop,
    "validation": validation,
  }
