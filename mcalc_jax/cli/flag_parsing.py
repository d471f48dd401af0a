"""absl flag parsing for the jobs that take a locked `--config`: one-line errors, no tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses flags; a bad flag or a misspelt --config field exits with a one-line message."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"{argv[0]}: {e}")
  except AttributeError as e:  # the locked ConfigDict lacks an overridden field
    key_error = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
    sys.exit(f"{argv[0]}: unknown --config field {key_error.args[0]}")
