"""The paper's recipe (Pesapane et al. 2023), kept as a named config: `configs/default.py` with
`recipe=paper`.

  mcalc-cv --config=configs/paper.py:task=1,model=alexnet --config.data_dir=runs/tfds ...

Patches of 112 native pixels (`configs/data.py:source=mias`), Gaussian blur of 1 pixel,
per-patch z-score, no front end; AlexNet, ResNet18 or ResNet34 trained from scratch with
cross-entropy, Adam, batch 16, lr 1e-4 and early stopping.
"""

import ml_collections

from mcalc_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`configs/default.py` for `arg` with the paper's recipe."""
  return default.get_config(",".join(filter(None, (arg, "recipe=paper"))))
