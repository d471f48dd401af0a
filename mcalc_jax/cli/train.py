"""mcalc-train: train one of the paper's patch classifiers.

  mcalc-train --config=configs/task1_resnet18.py --workdir=runs/task1_resnet18 \
      --config.batch_size=64 --config.learning_rate=3e-4

Every field of the config file can be overridden with --config.<field>; a misspelt field is an
error (the config is locked). Restarting with the same --workdir resumes the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mcalc_jax import evaluation, parallel, train
from mcalc_jax.cli.flag_parsing import parse_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config and events.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  parallel.maybe_initialize_distributed(**config.distributed)
  parallel.enable_compilation_cache()
  logging.info(
    "Process %d of %d; local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  summary = train.train_and_evaluate(config, _WORKDIR.value)
  logging.info("Done: %s", summary)
  if config.evaluate_at_end:
    _evaluate(config)


def _evaluate(config) -> None:
  """The evaluation job on the finished run (single process: it pools every patient's rows)."""
  if jax.process_count() > 1:
    logging.warning(
      "Skipping the final evaluation in a multi-process run: run mcalc-evaluate "
      "--workdir=%s in one process.",
      _WORKDIR.value,
    )
    return
  evaluation.evaluate_run(_WORKDIR.value, split=config.test_split)


def run() -> None:
  """Console-script entry point."""
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
