"""mcalc-froc: whole-image evaluation of scored mammograms against a findings manifest.

  mcalc-score --workdir=RUN --input=MANIFEST.csv --output=SCORES
  mcalc-froc --scores=SCORES --manifest=MANIFEST.csv [--output=SCORES/froc] [--bilateral_weight=0.5]

Cluster-level FROC (sensitivity at 0.5, 1 and 2 false-positive regions per image), image- and
breast-level AUC, each cluster's rank among its image's regions, with patient-bootstrap CIs;
the hit rule and the outputs: `mcalc_jax.whole_image.froc`. With --bilateral_weight each image is read
against the same view of the other breast (`mcalc_jax.whole_image.bilateral`; the manifest's patient,
laterality and view columns pair them). The outputs key patients by a salted hash of the
manifest's patient_id unless --keep_identifiers (`mcalc_jax.archives.scored.pseudonymised`).
Where mcalc-score --mark_classifier left a marks.csv, the CAD marks' FROC too, in
OUTPUT/froc_marks (`mcalc_jax.archives.scored.evaluate_scored_folder`; each image alone), and the
image AUC of the marks and tiles read together in OUTPUT/image_reading
(`mcalc_jax.whole_image.image_reading`).
"""

from __future__ import annotations

import json

from absl import flags

from mcalc_jax.archives import scored
from mcalc_jax.cli import common

_SCORES = flags.DEFINE_string("scores", None, "Output folder of mcalc-score.", required=True)
_MANIFEST = flags.DEFINE_string("manifest", None, "The manifest that was scored.", required=True)
_OUTPUT = flags.DEFINE_string("output", "", "Output folder (default SCORES/froc).")
_RESAMPLES = flags.DEFINE_integer("bootstrap_resamples", 1000, "Patient bootstrap resamples.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the patient bootstrap.")
_BILATERAL = flags.DEFINE_float(
  "bilateral_weight",
  0.0,
  "Take this times the other breast's peak logit off each image's logits (0: each image alone).",
)
_KEEP_IDENTIFIERS = flags.DEFINE_bool(
  "keep_identifiers", False, "Write the manifest's patient ids (not their salted hashes)."
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  result = scored.evaluate_scored_folder(
    _SCORES.value,
    _MANIFEST.value,
    _OUTPUT.value or None,
    resamples=_RESAMPLES.value,
    seed=_SEED.value,
    bilateral_weight=_BILATERAL.value,
    keep_identifiers=_KEEP_IDENTIFIERS.value,
  )
  print(json.dumps(_summary(result), indent=2))


def _summary(evaluation: dict) -> dict:
  """The counts and metrics of the tiles' FROC and, where there are marks, of the marks' and of
  both read together."""
  summary = {"counts": evaluation["counts"], "metrics": evaluation["metrics"]}
  for part in ("marks", "image_reading"):
    if part in evaluation:
      summary[part] = _summary(evaluation[part])
  return summary


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
