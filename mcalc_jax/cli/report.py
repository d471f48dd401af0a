"""mcalc-report: the paper's Table 2 from evaluated runs, as OUTPUT.md and OUTPUT.csv.

mcalc-report runs/task1_alexnet runs/task1_resnet18 [--output=table2] [--split=test] [--digits=2]
"""

from __future__ import annotations

from absl import app, flags

from mcalc_jax.cli import common
from mcalc_jax.reports import report

_OUTPUT = flags.DEFINE_string("output", "table2", "Output path without extension (.md and .csv).")
_SPLIT = flags.DEFINE_string("split", "test", "Evaluated split to tabulate (WORKDIR/eval/<split>).")
_DIGITS = flags.DEFINE_integer("digits", 2, "Decimals in the table (the paper uses 2).")


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    raise app.UsageError("usage: mcalc-report RUN_DIR... [--output=table2]")
  paths = report.write_report(argv[1:], _OUTPUT.value, split=_SPLIT.value, digits=_DIGITS.value)
  print("\n".join(paths))


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
