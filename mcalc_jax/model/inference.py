"""A trained patch classifier and its predictions: what evaluation, cross-validation and scoring use.

`load_classifier(workdir)` restores a run's best (or latest) checkpoint into a `Classifier`;
`probabilities` is the one jitted inference function (preprocessing + network + softmax), so
training's validation, evaluation and whole-mammogram scoring see patches the same way;
`predict` runs a classifier over eval batches and keeps each example's ids, from every process.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Iterable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from mcalc_jax.base import parallel
from mcalc_jax.model import checkpointing, cpu_tuning, networks
from mcalc_jax.model.preprocess import PreprocessOptions, preprocess

_NON_ID_FIELDS = ("image", "label", "mask")


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "chunk"))
def probabilities(
  graphdef: nnx.GraphDef,
  variables: Mapping[str, nnx.State],
  images: jax.Array,
  options: PreprocessOptions,
  chunk: int = 0,
) -> jax.Array:
  """Softmax probabilities [N, classes] of images in [0, 1]; with `chunk`, that many at a time."""
  model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])

  def forward(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(preprocess(x, options), train=False))

  return cpu_tuning.chunked_map(forward, images, chunk)


def inference_chunk(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """Images per forward pass for `config.model` on `mesh` (cpu_tuning; 0: the whole batch)."""
  cpu_default = networks.get(config.model).cpu_inference_chunk
  return cpu_tuning.inference_chunk(config, cpu_default, mesh.size)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained patch classifier: model structure, variables and the run's configuration.

  `variables` holds 'params' and 'batch_stats', replicated over `mesh`. Inference is SPMD: with
  several processes, each calls `probabilities` on its own images, with the same shapes.
  """

  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  variables: Mapping[str, nnx.State]
  mesh: jax.sharding.Mesh

  @property
  def patch_size(self) -> int:
    """Side of the patches (in their stored pixels) the classifier was trained on."""
    return int(self.config.patch_size)

  @property
  def field_of_view_mm(self) -> float:
    """Millimetres a patch covered in training (0: native pixels, whatever their size)."""
    return float(self.config.field_of_view_mm)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, S, S, 1] in [0, 1] -> float32 [N, num_classes] softmax, for this process's N.

    N is padded to a multiple of the local device count; each new N compiles once, so callers
    should use a fixed batch size.
    """
    padded, mask = parallel.pad_to_multiple(
      np.asarray(images, np.float32), jax.local_device_count()
    )
    batch = parallel.global_batch({"image": padded}, self.mesh)
    probs = probabilities(
      self.graphdef,
      self.variables,
      batch["image"],
      PreprocessOptions.from_config(self.config),
      inference_chunk(self.config, self.mesh),
    )
    local = multihost_utils.global_array_to_host_local_array(
      probs, self.mesh, parallel.batch_sharded(self.mesh).spec
    )
    return np.asarray(local)[mask]


def abstract_variables(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[nnx.GraphDef, dict[str, nnx.State]]:
  """The model's graph definition and variable shapes, replicated over `mesh`, for restoring."""
  model = nnx.eval_shape(lambda: networks.create_model(config, nnx.Rngs(0)))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  sharding = parallel.replicated(mesh)

  def place(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return graphdef, jax.tree.map(place, {"params": params, "batch_stats": batch_stats})


def load_classifier(workdir: str | pathlib.Path, which: str = "best") -> Classifier:
  """The classifier saved in a run's `workdir`: the `best` (validation metric) or `latest` step."""
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  config = checkpointing.load_config(workdir)
  mesh = parallel.make_mesh()
  graphdef, abstract = abstract_variables(config, mesh)
  with checkpointing.create_manager(workdir, config, read_only=True) as manager:
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"no checkpoint in {pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR}"
      )
    arrays, _ = checkpointing.restore(manager, step, {"model": abstract})
  logging.info("Loaded the %s classifier (step %d) from %s.", which, step, workdir)
  return Classifier(config, graphdef, arrays["model"], mesh)


def predict(
  classifier: Classifier, batches: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
  """P(class 1), label and id fields of every unmasked example in `batches`, of every process.

  Each process reads its share of each global batch; the rows come back gathered on every
  process in one process's order, so any metric sees the whole split, the same numbers as on one.
  """
  parts: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    keep = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)), bool)
    fields = {"prob": classifier.probabilities(batch["image"])[:, 1], "label": batch["label"]}
    fields |= {k: v for k, v in batch.items() if k not in _NON_ID_FIELDS}
    for key, value in fields.items():
      parts.setdefault(key, []).append(np.asarray(value)[keep])
  return {key: parallel.gather_batches(values) for key, values in parts.items()}
