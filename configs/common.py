"""Helpers shared by the config files: their `get_config(arg)` argument strings."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'task=2,model=resnet34' over `defaults`, each value typed like its default.

  A bare word sets a boolean default to True ('paper' for paper=False). An unknown key fails
  naming the known ones, so a typo never runs an unintended experiment.
  """
  values = dict(defaults)
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    key, has_value, text = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
    values[key] = _typed(text, defaults[key], key) if has_value else True
  return ml_collections.ConfigDict(values)


def _typed(text: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"config argument {key}={text!r} is not a boolean")
    return text.lower() in ("true", "1")
  return type(default)(text) if default is not None else text
