"""What tiling in millimetres costs: one 4000x3000 FFDM mammogram (0.07 mm pixels) scored with
native 112-pixel tiles and with 11.2-mm tiles (160 pixels, resampled to 112 on the device).

  python -m tools.benchmarks.physical_scoring [--models=alexnet,resnet18] [--images=2] [--rounds=3]

Both use a randomly initialised network of the same input size, every tile scored, in one
process, in interleaved rounds (medians). Per tile, the difference is the resampling (and the
larger tile cut); per mammogram, 11.2-mm tiles are also fewer (each covers 2x the area).
"""

from __future__ import annotations

import argparse
import statistics

import jax

from tools.benchmarks import scoring as benchmark_scoring

FOV_MM = 11.2


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="alexnet,resnet18")
  parser.add_argument("--images", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=256)
  args = parser.parse_args()
  print(f"{jax.default_backend()}, {benchmark_scoring.SHAPE} at 0.07 mm, medians of {args.rounds}")
  print(
    "| network | tiles | tile px | tiles / mammogram | s / mammogram | ms / tile | x native per tile |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for model in args.models.split(","):
    runs = {
      "native 112 px": benchmark_scoring.random_classifier(model),
      f"{FOV_MM} mm": benchmark_scoring.random_classifier(
        model, overrides={"field_of_view_mm": FOV_MM}
      ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    tiles: dict[str, int] = {}
    for _ in range(args.rounds):
      for name, classifier in runs.items():
        seconds, tiles[name] = benchmark_scoring.time_scorer(
          classifier, 0, args.images, args.batch_size
        )
        times[name].append(seconds)
    per_tile = {name: statistics.median(t) / tiles[name] * 1e3 for name, t in times.items()}
    for name in runs:
      side = round(FOV_MM / 0.07) if "mm" in name else 112
      print(
        f"| {model} | {name} | {side} | {tiles[name]} | {statistics.median(times[name]):.2f} | "
        f"{per_tile[name]:.2f} | {per_tile[name] / per_tile['native 112 px']:.2f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
