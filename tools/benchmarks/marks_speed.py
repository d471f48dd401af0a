"""The dense marks pass against the tile scorer: seconds per full-field mammogram, at one mm.

  python -m tools.benchmarks.marks_speed [--run_dir=runs/task1_specknet] [--rounds=3]
      [--shape=4000,3000] [--pixel_mm=0.1] [--resample=zoom,jax] [--detector_members=1,3]
      [--detector_dir=WORKDIR/speck_detector] [--profile]

One synthetic FFDM mammogram (`input_pipeline.synthetic`, processed for presentation, 12-bit,
`--shape` pixels of `--pixel_mm`; the first left breast of the cohort's seed with a cluster) is
read two ways, per image:
  - tiles: `TileSettings().scorer(classifier)` (the default stride, tiles of the run's 11.2 mm
    resampled to its 0.2-mm input on the device, background tiles skipped), `Scorer.score` (host
    preparation, the copy to the devices, the network, the read-back). The classifier is SpeckNet:
    the run in `--run_dir` (`load_classifier(run_dir, 'best')`) or, without one, randomly
    initialised (speed needs no trained weights);
  - dense marks: the image as fractions of its range, resampled to the run's pixel size, then
    `specks.classical_speck_map`, `find_specks`, `clusters.group` and `marks.mark_image`; once per
    `--resample` method (`zoom`: scipy.ndimage.zoom, linear, pixel edges aligned; `jax`:
    jax.image.resize, linear, antialiased, jitted: the resampling the tile path gives its tiles
    in `mcalc_jax.model.preprocess`), and once at the image's own pixels (no resampling);
  - dense marks from a trained speck detector (`mcalc_jax.model.speck_detector`, what
    `mcalc-score --mark_classifier` runs when the classifier names one): `specks.network_speck_map`
    (the image zoomed to the detector's 0.2 mm, its banded pass), then `marks.mark_image` at the
    config's detector threshold; once per `--detector_members` (an ensemble of that many,
    randomly initialised: its time does not depend on the weights, only the marks found do) and
    once for the detector saved in `--detector_dir`.
Every pass is warmed up once (JIT compilation), then the passes are timed in turn, round after
round, in one process (other jobs on the cores slow every pass alike): best of `--rounds`, the
median beside it, and tile / dense (>= 1: the dense pass is no slower). `--profile` adds the
dense pass's steps alone (best of the rounds): resampling, breast mask, top-hat, local noise,
labelling (specks), clustering, marks.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from scipy import ndimage

from input_pipeline import morphology, synthetic
from input_pipeline.breast import breast_mask
from input_pipeline.mammogram import Mammogram
from mcalc_jax.configs import default
from mcalc_jax.model import inference, speck_detector
from mcalc_jax.whole_image import clusters, marks, scoring, specks
from tools.benchmarks import scoring as scoring_benchmark

Resampler = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def synthetic_ffdm(shape: tuple[int, int], pixel_mm: float, seed: int = 0) -> Mammogram:
  """A rendered FFDM-like mammogram (chest wall left): the first left view with a cluster."""
  options = synthetic.SyntheticOptions(image_size=shape, pixel_spacing_mm=pixel_mm)
  cohort = synthetic.sample_cohort(4, seed, options)
  left = [s for s in cohort if s.laterality == "L"]
  spec = next((s for s in left if s.clusters), left[0])
  pixels = synthetic.render_image(spec, options).pixels
  return Mammogram(
    pixels=pixels,
    max_value=synthetic.MAX_VALUE,
    bits_stored=synthetic.BITS_STORED,
    pixel_spacing_mm=(pixel_mm, pixel_mm),
    spacing_assumed=False,
    laterality=spec.laterality,
    view=spec.view,
    flipped=False,
    original_shape=shape,
    path=f"synthetic:{spec.image_id}",
  )


def random_specknet() -> inference.Classifier:
  """A randomly initialised SpeckNet of the default recipe: 11.2-mm patches of 56 pixels."""
  config = default.get_config("task=1,model=specknet")
  config.patch_size = config.preprocess.input_size  # patches stored at the network's pixels
  config.field_of_view_mm = default.FIELD_OF_VIEW_MM
  return scoring_benchmark.classifier_of(config)


def model_pixel_mm(classifier: inference.Classifier) -> float:
  """The side of the network's input pixels in mm: its patches' mm over its input size."""
  if classifier.field_of_view_mm <= 0:
    raise ValueError("the run was trained on native pixels: it has no millimetres to match")
  return classifier.field_of_view_mm / int(classifier.config.preprocess.input_size)


def zoom_resample(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Linear resampling on pixel edges (scipy), no antialiasing: the cheap way down."""
  factors = (shape[0] / pixels.shape[0], shape[1] / pixels.shape[1])
  return ndimage.zoom(pixels, factors, order=1, grid_mode=True, mode="nearest")


@functools.cache
def _jax_resize(shape: tuple[int, int]) -> Callable[[Any], jax.Array]:
  return jax.jit(functools.partial(jax.image.resize, shape=shape, method="linear"))


def jax_resample(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """jax.image.resize (linear, antialiased), jitted: what the tile path does to its tiles."""
  return np.asarray(_jax_resize(shape)(pixels))


RESAMPLERS: dict[str, Resampler] = {"zoom": zoom_resample, "jax": jax_resample}


def resampled(mammogram: Mammogram, pixel_mm: float, resample: Resampler | None) -> np.ndarray:
  """The image as float32 fractions of its range, at `pixel_mm` (as it is without `resample`)."""
  pixels = mammogram.pixels / np.float32(mammogram.max_value)
  if resample is None:
    return pixels
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  shape = tuple(round(n * spacing / pixel_mm) for n in pixels.shape)
  return resample(pixels, shape)


def dense_marks(
  mammogram: Mammogram, pixel_mm: float, resample: Resampler | None
) -> list[marks.Mark]:
  """The dense marks pass of one image at `pixel_mm`, marks in the image's original pixels."""
  pixels = resampled(mammogram, pixel_mm, resample)
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  speck_map = specks.classical_speck_map(pixels, pixel_mm, orientation=mammogram.orientation)
  speck_map = dataclasses.replace(speck_map, image_pixel_mm=spacing)
  return marks.mark_image(speck_map, mammogram.path)


def detector_marks(
  mammogram: Mammogram, detector: speck_detector.SpeckDetector, threshold: float
) -> list[marks.Mark]:
  """The dense marks pass of one image on a trained detector's map (`threshold`: a speck's
  probability), marks in the image's original pixels."""
  speck_map = specks.network_speck_map(detector, mammogram)
  return marks.mark_image(speck_map, mammogram.path, speck_rule=specks.SpeckRule(threshold))


@dataclasses.dataclass(frozen=True)
class Pass:
  """One way of reading the image, and what it is called in the table."""

  name: str
  pixels: str  # the grid it works on
  run: Callable[[], Any]


def passes(
  mammogram: Mammogram,
  scorer: scoring.Scorer,
  pixel_mm: float,
  resamplers: Sequence[str],
  detectors: Mapping[str, speck_detector.SpeckDetector],
) -> list[Pass]:
  """The tile scorer first (the reference), then the dense pass per resampler and unresampled,
  then on each of the named `detectors`' maps."""
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  h, w = mammogram.pixels.shape
  at_model = f"{round(h * spacing / pixel_mm)}x{round(w * spacing / pixel_mm)} at {pixel_mm:g} mm"
  tile = scorer.plan.tile_pixels(mammogram)
  found = [
    Pass(
      f"tiles ({tile[0]} px every {tile[1]}, to {scorer.patch_size} px)",
      f"{scorer.field_of_view_mm:g}-mm tiles at {pixel_mm:g} mm",
      lambda: scorer.score(mammogram),
    )
  ]
  for name in resamplers:
    run = functools.partial(dense_marks, mammogram, pixel_mm, RESAMPLERS[name])
    found.append(Pass(f"dense marks, resampled ({name})", at_model, run))
  own = f"{h}x{w} at {spacing:g} mm"
  found.append(
    Pass("dense marks, own pixels", own, functools.partial(dense_marks, mammogram, spacing, None))
  )
  threshold = default.get_config().marks.detector_threshold
  grid = f"to {speck_detector.PIXEL_MM:g} mm (zoom)"
  for name, detector in detectors.items():
    run = functools.partial(detector_marks, mammogram, detector, threshold)
    found.append(Pass(f"dense marks, speck detector ({name})", grid, run))
  return found


def detectors_of(members: Sequence[int], folder: str) -> dict[str, speck_detector.SpeckDetector]:
  """Randomly initialised detectors of each ensemble size, and the one saved in `folder`."""
  found = {
    f"{k} member{'s' * (k > 1)}, random weights": speck_detector.create(
      speck_detector.DetectorConfig(members=k)
    )
    for k in members
  }
  if folder:
    detector = speck_detector.load(folder)
    found[f"{detector.config.members} member(s), {folder}"] = detector
  return found


def timed(call: Callable[[], Any]) -> float:
  """Seconds of one call."""
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def interleaved(
  runs: Sequence[Callable[[], Any]], rounds: int
) -> tuple[list[Any], list[list[float]]]:
  """Each call's result (of its warm-up call, which compiles) and its seconds per round; the
  calls alternate within a round, so that other jobs on the cores slow them alike."""
  results = [run() for run in runs]
  seconds: list[list[float]] = [[] for _ in runs]
  for _ in range(rounds):
    for n, run in enumerate(runs):
      seconds[n].append(timed(run))
  return results, seconds


def outcome(result: Any) -> str:
  """What a pass found: tiles scored, or marks and their specks."""
  if isinstance(result, scoring.ImageScores):
    return f"{result.tiles_scored} tiles scored"
  return f"{len(result)} marks of {sum(m.specks for m in result)} specks"


def profile_steps(
  mammogram: Mammogram, pixel_mm: float, resample: Resampler | None
) -> dict[str, Callable[[], Any]]:
  """The dense pass's steps as separate calls on their inputs (`classical_speck_map`'s parts)."""
  pixels = resampled(mammogram, pixel_mm, resample)
  mask = breast_mask(pixels)
  margin = round(specks.EDGE_MARGIN_MM / pixel_mm)
  inner = ndimage.minimum_filter(mask, 2 * margin + 1, mode="constant")
  tophat = morphology.white_tophat_mm(pixels, pixel_mm, specks.TOPHAT_RADIUS_MM)
  block = max(2, round(specks.NOISE_WINDOW_MM / pixel_mm))
  speck_map = specks.classical_speck_map(pixels, pixel_mm)
  found = specks.find_specks(speck_map)
  return {
    "to float, resample": lambda: resampled(mammogram, pixel_mm, resample),
    "breast mask + margin": lambda: ndimage.minimum_filter(
      breast_mask(pixels), 2 * margin + 1, mode="constant"
    ),
    "top-hat": lambda: morphology.white_tophat_mm(pixels, pixel_mm, specks.TOPHAT_RADIUS_MM),
    "local noise": lambda: specks.local_noise(tophat, inner, block),
    "whole map": lambda: specks.classical_speck_map(pixels, pixel_mm),
    "specks (labelling)": lambda: specks.find_specks(speck_map),
    "clusters": lambda: clusters.group(found),
    "marks": lambda: marks.mark_image(speck_map, "profile"),
  }


def print_profile(
  mammogram: Mammogram, pixel_mm: float, resamplers: Sequence[str], rounds: int
) -> None:
  """Best-of-`rounds` seconds of each step of the dense pass, per grid."""
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  grids = {f"{pixel_mm:g} mm ({r})": (pixel_mm, RESAMPLERS[r]) for r in resamplers}
  grids[f"{spacing:g} mm (own)"] = (spacing, None)
  steps = {name: profile_steps(mammogram, *grid) for name, grid in grids.items()}
  names = list(next(iter(steps.values())))
  print(f"\ndense pass by step, s (best of {rounds}; 'whole map' is classical_speck_map)")
  print("| step | " + " | ".join(steps) + " |")
  print("| --- |" + " --- |" * len(steps))
  for step in names:
    _, seconds = interleaved([calls[step] for calls in steps.values()], rounds)
    best = [min(s) for s in seconds]
    print(f"| {step} | " + " | ".join(f"{b:.3f}" for b in best) + " |", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", default="", help="a SpeckNet run; none: random weights")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--shape", default="4000,3000", help="rows,columns of the mammogram")
  parser.add_argument("--pixel_mm", type=float, default=0.1, help="the mammogram's pixel side")
  parser.add_argument("--seed", type=int, default=0, help="the synthetic cohort's")
  parser.add_argument("--resample", default="zoom,jax", help=f"of {', '.join(RESAMPLERS)}")
  parser.add_argument("--detector_members", default="1,3", help="random detectors' sizes")
  parser.add_argument("--detector_dir", default="", help="a trained speck detector's folder")
  parser.add_argument("--batch_size", type=int, default=scoring.TileSettings.batch_size)
  parser.add_argument("--profile", action="store_true", help="time the dense pass's steps too")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  shape = tuple(int(n) for n in args.shape.split(","))
  resamplers = [r for r in args.resample.split(",") if r]
  classifier = inference.load_classifier(args.run_dir) if args.run_dir else random_specknet()
  pixel_mm = model_pixel_mm(classifier)
  scorer = scoring.TileSettings(batch_size=args.batch_size).scorer(classifier)
  mammogram = synthetic_ffdm(shape, args.pixel_mm, args.seed)
  weights = args.run_dir or "random weights"
  print(
    f"{jax.default_backend()} ({jax.local_device_count()} x {jax.devices()[0].device_kind}), "
    f"{shape[0]}x{shape[1]} synthetic FFDM at {args.pixel_mm:g} mm ({mammogram.path}); "
    f"{classifier.config.model} ({weights}) at {pixel_mm:g} mm; best of {args.rounds} "
    "interleaved rounds after a warm-up"
  )
  members = [int(k) for k in args.detector_members.split(",") if k]
  rows = passes(mammogram, scorer, pixel_mm, resamplers, detectors_of(members, args.detector_dir))
  results, seconds = interleaved([row.run for row in rows], args.rounds)
  tiles = min(seconds[0])
  print("| pass | grid | found | s / image (best) | s / image (median) | tile / this |")
  print("| --- | --- | --- | --- | --- | --- |")
  for row, result, s in zip(rows, results, seconds, strict=True):
    print(
      f"| {row.name} | {row.pixels} | {outcome(result)} | {min(s):.3f} | "
      f"{statistics.median(s):.3f} | {tiles / min(s):.2f} |",
      flush=True,
    )
  if args.profile:
    print_profile(mammogram, pixel_mm, resamplers, args.rounds)


if __name__ == "__main__":
  main()
