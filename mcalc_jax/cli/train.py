"""mcalc-train: train one of the paper's patch classifiers, then evaluate it on the test split.

  mcalc-train --config=configs/default.py:task=1,model=resnet18 --workdir=runs/task1_resnet18 \
      --config.batch_size=64 --config.learning_rate=3e-4

Every field of the config can be overridden with --config.<field>; a misspelt field is an error
(the config is locked). Restarting with the same --workdir resumes the run.
"""

from __future__ import annotations

from absl import flags, logging

from mcalc_jax.cli import cluster, common
from mcalc_jax.model import train
from mcalc_jax.reports import evaluation

_CONFIG = common.define_config_flag("Training config (configs/default.py:task=T,model=NET).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config and events.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  config = _CONFIG.value
  cluster.start_job(config)
  summary = train.train_and_evaluate(config, _WORKDIR.value)
  logging.info("Done: %s", summary)
  if config.evaluate_at_end:
    evaluation.evaluate_run(_WORKDIR.value, split=config.test_split)


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
