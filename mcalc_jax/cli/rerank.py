"""mcalc-rerank: fits a tile reranker on scored mammograms with known clusters.

  mcalc-score --workdir=RUN --input=MANIFEST.csv --output=SCORES
  mcalc-rerank --scores=SCORES --manifest=MANIFEST.csv --output=reranker.json
  mcalc-score --workdir=RUN --input=NEW_ARCHIVE --output=OUT --reranker=reranker.json

The reranker (`mcalc_jax.whole_image.reranking`) is a class-balanced logistic regression on classical
features of every scored tile, positives the tiles that hit a cluster of the manifest: the
whole-image decision fitted on the tiles that are scored, as `mcalc-cv` does per fold.
"""

from __future__ import annotations

from absl import flags

from mcalc_jax.archives import scored
from mcalc_jax.base import files
from mcalc_jax.cli import common
from mcalc_jax.whole_image import reranking

_SCORES = flags.DEFINE_string("scores", None, "Output folder of mcalc-score.", required=True)
_MANIFEST = flags.DEFINE_string(
  "manifest", None, "The manifest that was scored, with its clusters.", required=True
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the reranker's JSON.", required=True)
_FEATURES = flags.DEFINE_list(
  "features",
  list(reranking.DEFAULT_FEATURES),
  f"Tile features, of {', '.join(reranking.FEATURES)} and {reranking.NETWORK_FEATURE} (only on "
  "images the network never trained on).",
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  files.check_writable(_OUTPUT.value)  # before minutes of fitting, not after
  model = scored.fit_scored_folder(_SCORES.value, _MANIFEST.value, tuple(_FEATURES.value))
  reranking.save(_OUTPUT.value, model)
  print(f"tile reranker on {', '.join(model.features)} written to {_OUTPUT.value}")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
