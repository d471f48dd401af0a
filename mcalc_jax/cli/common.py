"""What every job's command line shares: the `--config` flag, one-line errors, the entry point.

`--config=configs/NAME.py[:ARGS]` names a file of a checkout; where no such file exists (a job
run outside the checkout, from an installed wheel), the installed copy `mcalc_jax.configs.NAME`
is used, so every job runs from any folder.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIGS_PREFIX = "configs/"
_CONFIG_FILE_ERROR = "Error whilst parsing config file"
_CONFIG_FLAGS = ("--config", "--data_config")


def define_config_flag(
  help_text: str, name: str = "config", required: bool = True
) -> flags.FlagHolder:
  """A locked config-file flag (a misspelt override is an error): `--config`, `--data_config`."""
  holder = config_flags.DEFINE_config_file(name, None, help_text, lock_config=True)
  if required:
    flags.mark_flag_as_required(name)
  return holder


def load_findings(data_config) -> list:
  """The findings of the source a data config (configs/data.py) names, at its location."""
  from input_pipeline import sources  # noqa: PLC0415  (only jobs that localise need it)

  return sources.get(data_config.source).load_findings(data_config.location)


def packaged_config(spec: str) -> str:
  """`configs/NAME.py[:ARGS]` with the installed copy's path when the file is not here.

  Raises FileNotFoundError when neither exists.
  """
  path, colon, args = spec.partition(":")
  if os.path.isfile(path):
    return spec
  if path.startswith(_CONFIGS_PREFIX):
    installed = importlib.resources.files("mcalc_jax.configs") / path[len(_CONFIGS_PREFIX) :]
    if installed.is_file():
      return f"{installed}{colon}{args}"
  raise FileNotFoundError(f"config file {path} not found (here or in the installed configs)")


def _resolved(argv: Sequence[str]) -> list[str]:
  """argv with every config-file flag value (`--config=configs/...`, `--data_config ...`) resolved."""
  out = list(argv)
  for i, arg in enumerate(out):
    name, equals, value = arg.partition("=")
    if name in _CONFIG_FLAGS and equals:
      out[i] = f"{name}={packaged_config(value)}"
    elif arg in _CONFIG_FLAGS and i + 1 < len(out):
      out[i + 1] = packaged_config(out[i + 1])
  return out


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses flags; a bad flag, config argument or misspelt --config field exits in one line."""
  try:
    return flags.FLAGS(_resolved(argv))
  except FileNotFoundError as e:
    sys.exit(f"{argv[0]}: {e}")
  except flags.Error as e:
    message = str(e)
    if _CONFIG_FILE_ERROR in message:  # config_flags appends the config file's traceback
      message = message.strip().splitlines()[-1]
    sys.exit(f"{argv[0]}: {message}")
  except AttributeError as e:  # the locked ConfigDict lacks an overridden field
    key_error = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
    sys.exit(f"{argv[0]}: unknown --config field {key_error.args[0]}")


def no_extra_arguments(argv: Sequence[str]) -> None:
  """Refuses positional arguments (a flag without its leading dashes, usually)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def run(main: Callable[[list[str]], None]) -> None:
  """Console-script entry point: absl app with JAX's flags and one-line flag errors."""
  import jax  # noqa: PLC0415  (after the job module is imported: its flags come first)

  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
