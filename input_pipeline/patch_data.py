"""The training data a config names: the one place that turns `config.dataset` into batches.

`create_data(config)` gives the `PatchData` (input_pipeline.pipeline) that training, evaluation
and cross-validation read: the TFDS patch dataset on grain or tf.data, or generated noise patches.
"""

from __future__ import annotations

from input_pipeline import noise, pipeline, tfdata_pipeline

BACKENDS = ("grain", "tfdata")


def create_data(config) -> pipeline.PatchData:
  """The PatchData source named by `config.dataset`: 'noise' or a TFDS patch dataset.

  A TFDS dataset streams on grain or, with `config.input_backend = "tfdata"`, on tf.data (same
  batches). The backend is checked first, so a typo fails even for the noise patches.
  """
  backend = config.get("input_backend", "grain")  # configs saved before the field: grain
  if backend not in BACKENDS:
    choices = " or ".join(repr(b) for b in BACKENDS)
    raise ValueError(f"config.input_backend must be {choices}, not {backend!r}")
  if config.dataset == noise.DATASET:
    return noise.NoisePatchData(config)
  data = pipeline.TfdsPatchData(config)
  return data if backend == "grain" else tfdata_pipeline.TfdataPatchData(data)
