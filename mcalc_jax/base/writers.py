"""Metric writers behind clu's `MetricWriter` interface, without TensorFlow.

clu 0.0.12's `metric_writers` imports TensorFlow, which the core install leaves out (1.4 GB, pins,
GPU memory). Here TensorBoard event files come from tensorboardX; where TensorFlow is installed,
clu's own default writer takes over. Only process 0 writes files; every process logs.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import tensorboardX
from absl import logging


class MetricWriter(Protocol):
  """The part of `clu.metric_writers.MetricWriter` the training loop uses."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def flush(self) -> None: ...

  def close(self) -> None: ...


class LoggingWriter:
  """Writes metrics to the absl log."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
    logging.info("[%d] %s", step, values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("Hyper-parameters: %s", dict(hparams))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """Writes TensorBoard event files with tensorboardX."""

  def __init__(self, logdir: str | pathlib.Path):
    self._writer = tensorboardX.SummaryWriter(str(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    simple = {
      k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
    }
    self._writer.add_hparams(simple, {}, name=".", global_step=0)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MultiWriter:
  """Sends every call to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


def create_default_writer(logdir: str | pathlib.Path, *, just_logging: bool) -> MetricWriter:
  """Logging everywhere, plus TensorBoard events in `logdir` unless `just_logging` (processes > 0).

  Uses clu's writer when TensorFlow and TensorBoard are importable (recent TensorFlow wheels no
  longer bring TensorBoard, which clu's summary writer imports), tensorboardX otherwise.
  """
  if all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tensorboard")):
    from clu import metric_writers  # noqa: PLC0415  (imports TensorFlow)

    return metric_writers.create_default_writer(str(logdir), just_logging=just_logging)
  if just_logging:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), TensorBoardWriter(logdir)])
