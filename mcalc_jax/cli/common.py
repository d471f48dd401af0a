"""What every job's command line shares: the `--config` flag, one-line errors, the entry point.

`--config=configs/NAME.py[:ARGS]` names a file of a checkout; where no such file exists (a job
run outside the checkout, from an installed wheel), the installed copy `mcalc_jax.configs.NAME`
is used, so every job runs from any folder.

A user's mistake (`USER_ERRORS`: a bad input, manifest, output folder or setting, an unreadable
mammogram, a full disk) ends a job with one line, `mcalc-JOB: PATH: REASON`, and exit status 1;
`--traceback` prints the traceback as well. Anything else is a bug, and shows its traceback.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from input_pipeline.errors import MammogramError, UserError

_CONFIGS_PREFIX = "configs/"
_CONFIG_FILE_ERROR = "Error whilst parsing config file"
_CONFIG_FLAGS = ("--config", "--data_config")
USER_ERRORS = (UserError, MammogramError, OSError)

_TRACEBACK = flags.DEFINE_bool(
  "traceback", False, "On a user error (a bad input, output or setting), print its traceback too."
)


def define_config_flag(
  help_text: str, name: str = "config", required: bool = True
) -> flags.FlagHolder:
  """A locked config-file flag (a misspelt override is an error): `--config`, `--data_config`."""
  holder = config_flags.DEFINE_config_file(name, None, help_text, lock_config=True)
  if required:
    flags.mark_flag_as_required(name)
  return holder


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
  """Console-script entry point: absl app with JAX's flags, one-line flag and user errors."""
  import jax  # noqa: PLC0415  (after the job module is imported: its flags come first)

  jax.config.config_with_absl()
  app.run(_one_line_errors(main), flags_parser=parse_flags)


def _one_line_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """`main` with its user errors ended as `mcalc-JOB: PATH: REASON` (the job from its module)."""
  module = sys.modules[main.__module__]  # __main__ under python -m: its spec has the name
  job = "mcalc-" + (module.__spec__.name if module.__spec__ else module.__name__).split(".")[-1]

  @functools.wraps(main)
  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except USER_ERRORS as e:
      if _TRACEBACK.value:
        traceback.print_exc()
      sys.exit(f"{job}: {one_line(e)}")

  return guarded


def one_line(error: BaseException) -> str:
  """A user error's message on one line; an OSError's as `PATH: REASON` (or `PATH -> PATH2`)."""
  message = str(error)
  if isinstance(error, OSError) and not isinstance(error, MammogramError) and error.strerror:
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    message = ": ".join([" -> ".join(paths), error.strerror] if paths else [error.strerror])
  return " ".join(message.split()) or type(error).__name__
