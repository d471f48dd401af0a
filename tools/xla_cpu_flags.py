"""Which XLA:CPU options make our networks faster: each option set against the default, one run.

  python -m tools.xla_cpu_flags                              # every option set, all networks
  python -m tools.xla_cpu_flags --models=resnet18 --sets=default,xnn_conv

XLA reads XLA_FLAGS once per process, so each option set runs in a child process of this one, one
after the other on the same machine. Each child measures, per network, inference patches/s of
`Classifier.probabilities` (batch --infer_batch) and training samples/s of the project's train
step (batch --train_batch), and the probabilities of a fixed batch under fixed random weights. The
parent prints and writes (--out, JSON) each set's median speed over --rounds passes (every pass runs every set, so a change of load
hits all sets alike) as a ratio to the default set, and the
largest probability difference from the default set's, so a fast path that changes the numbers
shows it. An option this jaxlib rejects is reported as failed, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

# Options of jaxlib 0.10's XLA:CPU that concern convolutions and dots (XNNPACK, YNNPACK, oneDNN).
OPTION_SETS = {
  "default": "",
  "no_xnnpack": "--xla_cpu_use_xnnpack=false",
  "xnn_conv": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
  "xnn_conv_dot": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
  "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
  "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
  "ynn_conv_dot": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
  "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
}
PATCH = 112


def child(args: argparse.Namespace) -> None:
  """Measures one option set (XLA_FLAGS already set by the parent) and writes JSON + npz."""
  from tools import benchmark, benchmark_scoring  # noqa: PLC0415 (after XLA_FLAGS is set)

  fixed = np.random.default_rng(1).uniform(0, 1, (args.infer_batch, PATCH, PATCH, 1))
  result, probabilities = {}, {}
  for model in args.models.split(","):
    classifier = benchmark_scoring.random_classifier(model)
    probabilities[model] = classifier.probabilities(fixed.astype(np.float32))
    result[model] = {
      "infer": benchmark.jax_infer_rate(
        classifier, args.infer_batch, args.repeats, args.min_seconds
      ),
      "train": benchmark.jax_train_rate(
        model, args.train_batch, args.repeats, args.min_seconds, "float32"
      ),
    }
  pathlib.Path(args.child).write_text(json.dumps(result))
  np.savez(args.child + ".npz", **probabilities)


def run_set(name: str, args: argparse.Namespace, scratch: str) -> tuple[dict, dict] | str:
  """(rates, probabilities) of one option set, or the reason it failed."""
  out = os.path.join(scratch, name + ".json")
  flags = f"{os.environ.get('XLA_FLAGS', '')} {OPTION_SETS[name]}".strip()
  env = {**os.environ, "XLA_FLAGS": flags}
  command = [
    sys.executable,
    "-m",
    "tools.xla_cpu_flags",
    f"--child={out}",
    f"--models={args.models}",
    f"--infer_batch={args.infer_batch}",
    f"--train_batch={args.train_batch}",
    f"--repeats={args.repeats}",
    f"--min_seconds={args.min_seconds}",
  ]
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  if done.returncode:
    return (done.stderr.strip().splitlines() or ["no output"])[-1]
  with np.load(out + ".npz") as npz:
    return json.loads(pathlib.Path(out).read_text()), dict(npz)


def _medians(results: list[tuple[dict, dict]]) -> tuple[dict, dict]:
  """Median rates over rounds, and the first round's probabilities (the same in every round)."""
  rates = {
    model: {
      mode: float(np.median([r[0][model][mode] for r in results])) for mode in ("infer", "train")
    }
    for model in results[0][0]
  }
  return rates, results[0][1]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sets", default=",".join(OPTION_SETS))
  parser.add_argument("--models", default="alexnet,resnet18,resnet34")
  parser.add_argument("--infer_batch", type=int, default=64)
  parser.add_argument("--train_batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2, help="Passes over all sets; medians.")
  parser.add_argument("--min_seconds", type=float, default=1.0)
  parser.add_argument("--out", default="docs/xla_cpu_flags.json")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child(args)
    return
  sets = args.sets.split(",")
  if sets[0] != "default":
    sets.insert(0, "default")
  report = {
    "load_average_start": os.getloadavg()[0],
    "xla_flags_base": os.environ.get("XLA_FLAGS", ""),
    "infer_batch": args.infer_batch,
    "train_batch": args.train_batch,
    "sets": {},
  }
  with tempfile.TemporaryDirectory() as scratch:
    measured: dict[str, list] = {name: [] for name in sets}
    for round_ in range(args.rounds):  # whole rounds, so a change of load hits every set alike
      for name in sets:
        result = run_set(name, args, scratch)
        measured[name].append(result)
        print(
          f"round {round_ + 1}: {name} {'failed' if isinstance(result, str) else 'done'}",
          flush=True,
        )
  print("| option set | network | infer/s | x default | train/s | x default | max abs dp |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  base = _medians(measured["default"])
  for name in sets:
    failures = [m for m in measured[name] if isinstance(m, str)]
    if failures:
      report["sets"][name] = {"flags": OPTION_SETS[name], "failed": failures[0]}
      print(f"| {name} | failed: {failures[0]} |")
      continue
    rates, probabilities = _medians(measured[name])
    rows = {}
    for model, rate in rates.items():
      row = rows[model] = {
        **rate,
        "infer_ratio": rate["infer"] / base[0][model]["infer"],
        "train_ratio": rate["train"] / base[0][model]["train"],
        "max_abs_probability_difference": float(
          np.abs(probabilities[model] - base[1][model]).max()
        ),
      }
      print(
        f"| {name} | {model} | {row['infer']:.1f} | {row['infer_ratio']:.2f} | "
        f"{row['train']:.1f} | {row['train_ratio']:.2f} | "
        f"{row['max_abs_probability_difference']:.1e} |"
      )
    report["sets"][name] = {"flags": OPTION_SETS[name], "networks": rows}
  report["load_average_end"] = os.getloadavg()[0]
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
