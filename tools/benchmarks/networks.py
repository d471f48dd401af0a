"""JAX against a PyTorch reference on this machine, in one run: train and inference speed per network.

  python -m tools.benchmarks.networks                       # all networks, train 16/128, inference 16/256
  python -m tools.benchmarks.networks --quick               # a few minutes: fewer repeats and batches
  python -m tools.benchmarks.networks --models=resnet18 --batch_sizes=16 --repeats=3 --torch_compile

Measures in one process, so every number shares the machine's state (other jobs on the cores
skew all of them alike, and the load average is recorded):
  - the matmul ceiling (float32 2048x2048 in numpy, jax and torch on a CPU; 8192x8192 in the
    benchmark's dtype on a GPU), in GFLOP/s, the highest of them being the ceiling;
  - forward FLOPs per 112x112 patch (2 x multiply-adds, from the layer shapes);
  - per network, train samples/s (the project's jitted train step: preprocessing, augmentation,
    Adam) and inference patches/s (`Classifier.probabilities`: host batch, preprocessing,
    softmax), and the same network in PyTorch (`tools.benchmarks.torch_reference`: Adam; host batch, the same
    blur and z-score, softmax, host probabilities), best of
    channels_last eager and, with --torch_compile, torch.compile), same thread count, on the
    same device (a GPU when JAX has one; --dtype=bfloat16 runs PyTorch under autocast);
  - seconds per 4000x3000 12-bit mammogram for the whole-image scorer (`mcalc_jax.whole_image.scoring`),
    per stride, with the background skipped and with every tile, next to PyTorch scoring
    every tile;
  - ratios JAX / PyTorch and each side's share of the matmul ceiling, taking a training sample as
    3 forward passes of FLOPs.
Each figure is the median of --repeats repetitions after a warm-up; a repetition repeats calls
for at least --min_seconds. Writes docs/benchmark.json and docs/benchmark.md. PyTorch is an
optional extra: without it only the JAX side is measured, and the output says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcalc_jax.base import parallel
from mcalc_jax.configs import default
from mcalc_jax.model import train
from tools.benchmarks import scoring as benchmark_scoring

MODELS = ("alexnet", "resnet18", "resnet34")
PATCH = 112
TRAIN_FLOPS_FACTOR = 3  # forward + backward (gradients for inputs and for weights)
REPO = pathlib.Path(__file__).resolve().parents[1]


# --- FLOPs from the layer shapes -------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def resnet_convs(model: str, size: int = PATCH) -> list[tuple[int, int, int, int, int, int]]:
  """(input side, in channels, out channels, kernel, stride, padding) of each ResNet convolution."""
  stages = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}[model]
  convs = [(size, 1, 64, 7, 2, 3)]
  side = conv_output_size(conv_output_size(size, 7, 2, 3), 3, 2, 1)  # stem, then max-pool
  cin = 64
  for stage, blocks in enumerate(stages):
    cout = 64 * 2**stage
    for i in range(blocks):
      stride = 2 if stage > 0 and i == 0 else 1
      if stride != 1 or cin != cout:
        convs.append((side, cin, cout, 1, stride, 0))
      convs.append((side, cin, cout, 3, stride, 1))
      side = conv_output_size(side, 3, stride, 1)
      convs.append((side, cout, cout, 3, 1, 1))
      cin = cout
  return convs


def forward_flops(model: str, size: int = PATCH) -> int:
  """2 x multiply-adds of convolutions and dense layers for one 1-channel patch.

  Counted from the layer shapes (every tap, padded or not), not from XLA's cost analysis, which
  skips padded taps, so that the figure is the same for both frameworks.
  """
  macs = 0

  def conv(s: int, cin: int, cout: int, k: int, stride: int, pad: int) -> int:
    nonlocal macs
    s = conv_output_size(s, k, stride, pad)
    macs += s * s * cout * cin * k * k
    return s

  if model == "alexnet":
    s = conv(size, 1, 64, 11, 4, 2)
    s = conv_output_size(s, 3, 2, 0)
    s = conv(s, 64, 192, 5, 1, 2)
    s = conv_output_size(s, 3, 2, 0)
    s = conv(s, 192, 384, 3, 1, 1)
    s = conv(s, 384, 256, 3, 1, 1)
    conv(s, 256, 256, 3, 1, 1)
    macs += 256 * 6 * 6 * 4096 + 4096 * 4096 + 4096 * 2
    return 2 * macs
  for side, cin, cout, k, stride, pad in resnet_convs(model, size):
    conv(side, cin, cout, k, stride, pad)
  macs += 512 * 2
  return 2 * macs


# --- timing ------------------------------------------------------------------------------------


def timed_rate(
  call: Callable[[], Any], items: int, repeats: int, min_seconds: float, warmup: int = 1
) -> float:
  """Median items/s over `repeats` repetitions, after `warmup` calls.

  `call` must block until its result is ready. A repetition repeats `call` for at least
  `min_seconds`, so fast calls are not dominated by timer and dispatch noise.
  """
  for _ in range(warmup):
    call()
  rates = []
  for _ in range(repeats):
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < min_seconds:
      call()
      calls += 1
    rates.append(calls * items / (time.perf_counter() - start))
  return statistics.median(rates)


def matmul_ceiling(repeats: int, torch: Any | None, dtype: str) -> dict[str, float]:
  """Square matmul GFLOP/s in numpy (CPU only), jax and torch: what the chip can do.

  2048 on a CPU; 8192 on an accelerator, in the benchmark's dtype (its tensor cores' rate).
  """
  on_cpu = jax.default_backend() == "cpu"
  n = 2048 if on_cpu else 8192
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  flops = 2 * n**3 / 1e9
  result = {"numpy": timed_rate(lambda: a @ b, 1, repeats, 0.5) * flops} if on_cpu else {}
  ja, jb = (jnp.asarray(x, dtype) for x in (a, b))
  dot = jax.jit(jnp.dot)
  result["jax"] = timed_rate(lambda: dot(ja, jb).block_until_ready(), 1, repeats, 0.5) * flops
  if torch is not None:
    device = torch_device(torch)
    ta, tb = (torch.from_numpy(x).to(device, getattr(torch, dtype)) for x in (a, b))
    result["torch"] = timed_rate(lambda: sync(torch, ta @ tb), 1, repeats, 0.5) * flops
  return result


# --- JAX ---------------------------------------------------------------------------------------


def jax_train_call(
  model: str, batch_size: int, dtype: str, overrides: dict[str, Any] | None = None
) -> Callable[[], None]:
  """One call = one compiled train step of the project on a fixed batch, waited for.

  `overrides` sets further fields of the default configuration (e.g. {'cpu_tuning': {'conv_chunk': 0}}).
  """
  config = default.get_config("recipe=paper")  # the preprocessing the PyTorch side repeats
  config.model, config.batch_size, config.dtype = model, batch_size, dtype
  config.update(overrides or {})
  mesh = parallel.make_mesh()
  graphdef, tx, state = train.create_train_state(config, mesh)
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
    {
      "image": rng.uniform(0, 1, (batch_size, PATCH, PATCH, 1)).astype(np.float32),
      "label": rng.integers(0, 2, batch_size).astype(np.int32),
    },
    mesh,
  )
  step = train.make_train_step(config, graphdef, tx, mesh).lower(state, batch).compile()
  holder = [state]  # the step donates its state: carry the new one forward

  def call() -> None:
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics)

  return call


def jax_train_rate(
  model: str, batch_size: int, repeats: int, min_seconds: float, dtype: str
) -> float:
  """Samples/s of the project's jitted train step (compilation excluded)."""
  return timed_rate(jax_train_call(model, batch_size, dtype), batch_size, repeats, min_seconds)


def jax_infer_rate(classifier: Any, batch_size: int, repeats: int, min_seconds: float) -> float:
  """Patches/s of `Classifier.probabilities` (host numpy in, host probabilities out)."""
  images = np.random.default_rng(0).uniform(0, 1, (batch_size, PATCH, PATCH, 1))
  images = images.astype(np.float32)
  return timed_rate(lambda: classifier.probabilities(images), batch_size, repeats, min_seconds)


def mammogram_rows(model: str, classifier: Any, args: argparse.Namespace, torch: Any) -> list:
  """Seconds per 4000x3000 12-bit mammogram per stride: background skipped, and every tile.

  PyTorch scores every tile (no breast mask), so its ratio is taken against the JAX scorer's
  every-tile rate.
  """
  rows = []
  for stride in (int(s) for s in args.scoring_strides.split(",") if s):
    row: dict[str, Any] = {"model": model, "stride": stride}
    for key, fraction in (("breast", 0.1), ("all", 0.0)):
      seconds, tiles = benchmark_scoring.time_scorer(
        classifier, stride, args.scoring_images, args.scoring_batch_size, fraction
      )
      row[f"{key}_seconds"], row[f"{key}_tiles"] = seconds, tiles
    if torch is not None:
      rate = benchmark_scoring.torch_tiles_per_second(
        model, stride, args.scoring_batch_size, torch_device(torch), args.dtype
      )
      row["torch_seconds"] = row["all_tiles"] / rate
      row["ratio"] = row["torch_seconds"] / row["all_seconds"]
    rows.append(row)
    print(
      f"  mammogram {model} stride {stride}: {row['breast_seconds']:.2f} s "
      f"({row['breast_tiles']} breast tiles), every tile {row['all_seconds']:.2f} s "
      f"({row['all_tiles']})"
      + (f", PyTorch {row['torch_seconds']:.2f} s" if torch is not None else ""),
      flush=True,
    )
  return rows


# --- PyTorch -----------------------------------------------------------------------------------


def torch_device(torch: Any) -> str:
  """PyTorch runs where JAX runs: the GPU when JAX has one, else the CPU."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def sync(torch: Any, result: Any = None) -> Any:
  """Waits for queued GPU work, so a timed call ends when its result exists."""
  if torch.cuda.is_available():
    torch.cuda.synchronize()
  return result


def import_torch() -> tuple[Any, Any] | tuple[None, str]:
  """(torch, tools.torch_reference), or (None, why not) when the optional extra is absent."""
  try:
    import torch  # noqa: PLC0415 (the optional extra)

    from tools.benchmarks import torch_reference  # noqa: PLC0415
  except ImportError as error:
    return None, f"{error}"
  torch.set_num_threads(os.cpu_count() or 1)
  return torch, torch_reference


def torch_rates(
  torch: Any,
  torch_reference: Any,
  model: str,
  mode: str,
  batch_size: int,
  args: argparse.Namespace,
) -> dict[str, float]:
  """Samples/s of the reference network per variant (channels_last eager, torch.compile)."""
  torch.manual_seed(0)
  device = torch_device(torch)
  torch.backends.cudnn.benchmark = True
  net = torch_reference.create(model)
  torch_reference.check_param_count(model, net)
  net = net.to(device, memory_format=torch.channels_last)
  x = torch.rand(batch_size, 1, PATCH, PATCH, device=device)
  x = x.contiguous(memory_format=torch.channels_last)
  host = torch.rand(batch_size, 1, PATCH, PATCH)
  preprocessing = torch_reference.preprocessing(
    default.get_config("recipe=paper").preprocess.blur_sigma, device
  )
  labels = torch.randint(0, 2, (batch_size,), device=device)
  autocast = torch.autocast(device, torch.bfloat16, enabled=args.dtype == "bfloat16")
  variants = {"channels_last": net}
  if args.torch_compile:
    variants["compile"] = torch.compile(net)
  rates = {}
  for name, module in variants.items():
    start = time.perf_counter()
    if mode == "train":
      module.train()
      optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

      def call(module: Any = module, optimizer: Any = optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
          loss = torch.nn.functional.cross_entropy(module(x), labels)
        loss.backward()
        optimizer.step()
        sync(torch)

    else:
      module.eval()

      def call(module: Any = module) -> None:
        with torch.inference_mode(), autocast:
          # As `Classifier.probabilities`: host batch in, preprocessing, host probabilities out.
          batch = preprocessing(host.to(device))
          torch.softmax(module(batch), -1).cpu()

    call()  # compiles, for torch.compile
    if name == "compile":
      print(
        f"    torch.compile {model} {mode} {batch_size}: first call "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
      )
    # oneDNN builds its primitives over the first calls: one more warm-up than JAX needs.
    rates[name] = timed_rate(call, batch_size, args.repeats, args.min_seconds, warmup=2)
  return rates


# --- report ------------------------------------------------------------------------------------


def machine(torch: Any | None) -> dict[str, Any]:
  """CPU model, cores, load and library versions: what the numbers depend on."""
  cpu = platform.processor() or "unknown"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  flags = ""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
    flags = ",".join(f for f in ("avx2", "avx512f", "amx_tile", "fma") if f" {f}" in text)
  except OSError:
    pass
  return {
    "cpu": cpu,
    "cpu_flags": flags,
    "cores": os.cpu_count(),
    "load_average_start": os.getloadavg()[0],
    "jax": jax.__version__,
    "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
    "numpy": np.__version__,
    "torch": getattr(torch, "__version__", None),
    "torch_threads": torch.get_num_threads() if torch is not None else None,
    "python": platform.python_version(),
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
  }


def markdown(report: dict[str, Any]) -> str:
  """The report as a Markdown page: machine, ceiling, FLOPs and one row per measurement."""
  m, c = report["machine"], report["matmul_gflops"]
  lines = [
    "# mcalc_jax benchmark: JAX against PyTorch",
    "",
    f"Written by `python -m tools.benchmarks.networks {' '.join(report['argv'])}`, {m['date']}.",
    "",
    f"- Machine: {m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, backend {m['backend']}; "
    f"load average {m['load_average_start']:.1f} at the start, "
    f"{m['load_average_end']:.1f} at the end (above the core count means "
    "other jobs shared the cores and every number is low).",
    f"- Versions: jax {m['jax']}, numpy {m['numpy']}, torch {m['torch'] or 'absent'}"
    f" ({m['torch_threads']} threads), Python {m['python']}.",
    f"- {report['dtype']} matmul ceiling: "
    + ", ".join(f"{k} {v:.1f}" for k, v in c.items())
    + f" GFLOP/s; shares below are of {report['ceiling_gflops']:.1f}.",
    "- Forward GFLOP per 112x112 patch (2 x MACs from the layer shapes): "
    + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in report["flops_per_patch"].items())
    + f"; a training sample counts {TRAIN_FLOPS_FACTOR}x.",
    f"- Medians of {report['repeats']} repetitions (each >= {report['min_seconds']} s) after a "
    "warm-up, compilation excluded. JAX: the project's train step (preprocessing, augmentation, "
    "Adam) and `Classifier.probabilities` (host in/out, preprocessing, softmax); PyTorch: "
    "`tools.benchmarks.torch_reference` (train: Adam on a device-resident batch; inference: host batch in, "
    "the same blur and z-score, softmax, host out), best of "
    + ", ".join(report["torch_variants"] or ["(absent)"])
    + ".",
  ]
  if not report["complete"]:
    lines.append("- **Partial**: the run had not finished (or was stopped) when this was written.")
  if report["torch_absent"]:
    lines.append(f"- **PyTorch absent** ({report['torch_absent']}): JAX side only.")
  lines += [
    "",
    "| network | mode | batch | JAX samples/s | PyTorch samples/s | best PyTorch | JAX / PyTorch "
    "| JAX % ceiling | PyTorch % ceiling |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in report["results"]:
    torch_rate = r.get("torch")
    lines.append(
      f"| {r['model']} | {r['mode']} | {r['batch']} | {r['jax']:.1f} | "
      + (
        f"{torch_rate:.1f} | {r['torch_best']} | {r['ratio']:.2f} | "
        if torch_rate
        else "- | - | - | "
      )
      + f"{r['jax_pct_ceiling']:.0f} | "
      + (f"{r['torch_pct_ceiling']:.0f} |" if torch_rate else "- |")
    )
  if report.get("mammogram"):
    lines += [
      "",
      f"Whole {benchmark_scoring.SHAPE[0]}x{benchmark_scoring.SHAPE[1]} 12-bit mammogram "
      f"(synthetic, `tools.benchmarks.scoring`), {report['scoring_images']} image(s) streamed "
      "after a warm-up, seconds per image. Breast: tiles with under 10 % breast skipped (the "
      "scorer's default); every tile: nothing skipped, the like-for-like comparison with "
      "PyTorch, which scores every tile.",
      "",
      "| network | stride | breast tiles | s/image | every tile | s/image | PyTorch s/image "
      "| JAX / PyTorch speed |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["mammogram"]:
      lines.append(
        f"| {r['model']} | {r['stride']} | {r['breast_tiles']} | {r['breast_seconds']:.3g} | "
        f"{r['all_tiles']} | {r['all_seconds']:.3g} | "
        + (f"{r['torch_seconds']:.3g} | {r['ratio']:.2f} |" if "torch_seconds" in r else "- | - |")
      )
  return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--batch_sizes", default=None, help="Sets both train and inference batches.")
  parser.add_argument("--train_batch_sizes", default="16,128")
  parser.add_argument("--infer_batch_sizes", default="16,256")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min_seconds", type=float, default=1.0)
  parser.add_argument(
    "--quick", action="store_true", help="Repeats 2, min 0.5 s, train batch 16, inference batch 64."
  )
  parser.add_argument(
    "--torch_compile",
    action="store_true",
    help="Also time torch.compile (15-40 s compile per graph on 2 cores).",
  )
  parser.add_argument("--no_torch", action="store_true", help="JAX only.")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument(
    "--scoring_strides", default="112,56", help="Whole-mammogram strides; empty to skip."
  )
  parser.add_argument("--scoring_images", type=int, default=1)
  parser.add_argument("--scoring_batch_size", type=int, default=256)
  parser.add_argument("--out_dir", default=str(REPO / "docs"))
  args = parser.parse_args(argv)
  if args.quick:
    args.repeats, args.min_seconds = 2, 0.5
    args.train_batch_sizes, args.infer_batch_sizes = "16", "64"
    args.scoring_strides = "112"
  if args.batch_sizes:
    args.train_batch_sizes = args.infer_batch_sizes = args.batch_sizes
  return args


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  torch, torch_reference = (None, "--no_torch") if args.no_torch else import_torch()
  torch_absent = None if torch is not None else torch_reference
  if torch_absent:
    print(
      f"PyTorch reference absent ({torch_absent}); install the optional extra "
      "(pip install torch) to compare. Measuring JAX only.",
      flush=True,
    )
  report: dict[str, Any] = {
    "argv": list(argv if argv is not None else sys.argv[1:]),
    "machine": machine(torch),
    "repeats": args.repeats,
    "min_seconds": args.min_seconds,
    "dtype": args.dtype,
    "scoring_images": args.scoring_images,
    "torch_absent": torch_absent,
    "torch_variants": (["channels_last"] + (["compile"] if args.torch_compile else []))
    if torch is not None
    else [],
  }
  m = report["machine"]
  print(
    f"{m['cpu']}, {m['cores']} cores, load {m['load_average_start']:.1f}; jax {m['jax']}, "
    f"torch {m['torch'] or 'absent'}",
    flush=True,
  )
  ceiling = matmul_ceiling(max(args.repeats, 3), torch, args.dtype)
  report["matmul_gflops"] = ceiling
  report["ceiling_gflops"] = max(ceiling.values())
  print(
    "matmul ceiling GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items()), flush=True
  )
  models = args.models.split(",")
  report["flops_per_patch"] = {model: forward_flops(model) for model in models}
  print(
    "forward GFLOP/patch: "
    + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in report["flops_per_patch"].items()),
    flush=True,
  )
  results = report["results"] = []
  report["mammogram"] = []
  print(
    "| network | mode | batch | JAX/s | PyTorch/s | JAX/PyTorch | JAX % ceil | PyTorch % ceil |",
    flush=True,
  )
  for model in models:
    classifier = benchmark_scoring.random_classifier(model, args.dtype)
    cases = [("train", int(b)) for b in args.train_batch_sizes.split(",") if b]
    cases += [("infer", int(b)) for b in args.infer_batch_sizes.split(",") if b]
    for mode, batch in cases:
      if mode == "train":
        rate = jax_train_rate(model, batch, args.repeats, args.min_seconds, args.dtype)
      else:
        rate = jax_infer_rate(classifier, batch, args.repeats, args.min_seconds)
      factor = TRAIN_FLOPS_FACTOR if mode == "train" else 1
      gflop = report["flops_per_patch"][model] * factor / 1e9
      row = {
        "model": model,
        "mode": mode,
        "batch": batch,
        "jax": rate,
        "jax_pct_ceiling": 100 * rate * gflop / report["ceiling_gflops"],
      }
      if torch is not None:
        variants = torch_rates(torch, torch_reference, model, mode, batch, args)
        best = max(variants, key=variants.get)
        row.update(
          torch=variants[best],
          torch_best=best,
          torch_variants=variants,
          ratio=rate / variants[best],
          torch_pct_ceiling=100 * variants[best] * gflop / report["ceiling_gflops"],
        )
      results.append(row)
      write(report, pathlib.Path(args.out_dir), complete=False)  # a stopped run keeps its rows
      print(
        f"| {model} | {mode} | {batch} | {rate:.1f} | "
        + (
          f"{row['torch']:.1f} ({row['torch_best']}) | {row['ratio']:.2f} | "
          if torch is not None
          else "absent | - | "
        )
        + f"{row['jax_pct_ceiling']:.0f} % | "
        + (f"{row['torch_pct_ceiling']:.0f} % |" if torch is not None else "- |"),
        flush=True,
      )
    report["mammogram"].extend(mammogram_rows(model, classifier, args, torch))
    write(report, pathlib.Path(args.out_dir), complete=False)
  write(report, pathlib.Path(args.out_dir), complete=True)
  print(f"wrote {args.out_dir}/benchmark.json and benchmark.md")


def write(report: dict[str, Any], out: pathlib.Path, *, complete: bool) -> None:
  """Writes benchmark.json and benchmark.md; `complete` False marks a run still going."""
  report["complete"] = complete
  report["machine"]["load_average_end"] = os.getloadavg()[0]
  out.mkdir(parents=True, exist_ok=True)
  (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "benchmark.md").write_text(markdown(report))


if __name__ == "__main__":
  main()
