"""Where a ResNet train step's convolution time goes, pass by pass, against PyTorch.

  python -m tools.conv_layers                       # ResNet18's layer shapes, batch 16
  python -m tools.conv_layers --model=resnet34 --batch=128

For every distinct convolution of the network at a 112x112 input, one process times the forward
pass, the input gradient and the weight gradient in JAX (`lax.conv_general_dilated` and its
VJPs, each jitted alone) and in PyTorch (`conv2d` in channels_last and
`aten.convolution_backward` with one output asked for), and prints GFLOP/s per pass and the
milliseconds a train step spends in each pass over all layers of that shape. This is the
evidence behind docs/performance.md's account of the gap to PyTorch: which pass of which layer
is slow.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tools import benchmark

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
PASSES = ("forward", "input grad", "weight grad")


def jax_passes(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> list[Callable[[], Any]]:
  """Forward, input-gradient and weight-gradient calls of one convolution, each waited for."""

  def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    padding = ((pad, pad), (pad, pad))
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=DIMENSIONS
    )

  x, w = jnp.asarray(x), jnp.asarray(w)
  dy = jnp.ones(jax.eval_shape(conv, x, w).shape, x.dtype)
  forward = jax.jit(conv)
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  weight_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return [
    lambda: forward(x, w).block_until_ready(),
    lambda: input_grad(x, w, dy).block_until_ready(),
    lambda: weight_grad(x, w, dy).block_until_ready(),
  ]


def torch_passes(
  torch: Any, x: np.ndarray, w: np.ndarray, stride: int, pad: int
) -> list[Callable[[], Any]]:
  """The same three passes in PyTorch, channels_last, through aten's convolution kernels."""
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  dy = torch.ones_like(torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad))

  def backward(mask: list[bool]) -> Callable[[], Any]:
    args = (dy, tx, tw, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask)
    return lambda: torch.ops.aten.convolution_backward(*args)

  return [
    lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad),
    backward([True, False, False]),
    backward([False, True, False]),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34"])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=0.5)
  args = parser.parse_args()
  torch, _ = benchmark.import_torch()
  rng = np.random.default_rng(0)
  print(f"{args.model}, batch {args.batch}, float32, GFLOP/s JAX / PyTorch per pass")
  print("| input | kernel | count | " + " | ".join(PASSES) + " |")
  print("| --- | --- | --- | " + " | ".join(["---"] * len(PASSES)) + " |")
  totals = {name: np.zeros(2) for name in PASSES}  # ms per train step, JAX and PyTorch
  for (side, cin, cout, kernel, stride, pad), count in Counter(
    benchmark.resnet_convs(args.model)
  ).items():
    x = rng.standard_normal((args.batch, side, side, cin), dtype=np.float32)
    w = rng.standard_normal((kernel, kernel, cin, cout), dtype=np.float32) * 0.05
    out = benchmark.conv_output_size(side, kernel, stride, pad)
    gflop = 2 * args.batch * out * out * kernel * kernel * cin * cout / 1e9
    impls = [jax_passes(x, w, stride, pad)]
    impls += [torch_passes(torch, x, w, stride, pad)] if torch is not None else []
    cells = []
    for i, name in enumerate(PASSES):
      if cin == 1 and name == "input grad":  # the stem's input is data: nobody asks its gradient
        cells.append("-")
        continue
      rates = [benchmark.timed_rate(p[i], 1, args.repeats, args.seconds) for p in impls]
      totals[name][: len(rates)] += [count * 1e3 / r for r in rates]
      cells.append(" / ".join(f"{r * gflop:.0f}" for r in rates))
    print(
      f"| {side}x{side}x{cin} | {kernel}x{kernel}/{stride} -> {cout} | {count} | "
      + " | ".join(cells)
      + " |",
      flush=True,
    )
  print("\nms per train step in convolutions, JAX / PyTorch:")
  for name, (jax_ms, torch_ms) in totals.items():
    print(f"- {name}: {jax_ms:.1f} / {torch_ms:.1f}")
  jax_total, torch_total = sum(t[0] for t in totals.values()), sum(t[1] for t in totals.values())
  print(f"- all passes: {jax_total:.1f} / {torch_total:.1f}")


if __name__ == "__main__":
  main()
