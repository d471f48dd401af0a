"""Decoding ahead of the devices in worker processes: same images, input order, failures kept."""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import pytest

from input_pipeline.errors import MammogramError, NoPixelDataError
from mcalc_jax.archives import decoding, discovery
from mcalc_jax.whole_image.tiling import TilePlan

PLAN = TilePlan(patch_size=112, stride=112, field_of_view_mm=11.2, min_breast_fraction=0.75)


@dataclasses.dataclass(frozen=True)
class ProbeInput:
  """An input whose reading fails, saying whether the process reading it had imported JAX."""

  key: str
  path: str = "probe"
  relative_path: str = "probe"
  annotations: tuple = ()

  def read(self, with_header: bool = False):
    raise MammogramError(self.path, f"jax imported: {'jax' in sys.modules}")


@dataclasses.dataclass(frozen=True)
class CrashingInput(ProbeInput):
  """An input whose decoder takes its process down (as a crashing codec would)."""

  def read(self, with_header: bool = False):
    os._exit(3)


@dataclasses.dataclass(frozen=True)
class SlowInput(ProbeInput):
  """An input that takes `seconds` to decode, then fails (the clock counts failures too)."""

  seconds: float = 0.0

  def read(self, with_header: bool = False):
    time.sleep(self.seconds)
    raise MammogramError(self.path, "slow")


@pytest.fixture
def archive_files(cbis_dir, mias_dir, tmp_path):
  """Two real RLE CBIS-DDSM mammograms, a real MIAS PNG and a corrupt file, in that order."""
  corrupt = tmp_path / "corrupt.dcm"
  corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
  paths = [*sorted(cbis_dir.glob("*.dcm"))[:2], mias_dir / "images" / "mdb001.png", corrupt]
  return [discovery.Input(f"k{n}", str(p), p.name) for n, p in enumerate(paths)]


def test_worker_processes_decode_what_this_process_would_in_input_order(archive_files):
  decoded = list(decoding.decode_ahead(archive_files, PLAN, workers=2))

  assert [item.key for item, _ in decoded] == ["k0", "k1", "k2", "k3"]
  for item, result in decoded[:3]:
    expected = PLAN.prepare(item.read()[0])
    np.testing.assert_array_equal(result.prepared.pixels, expected.pixels)
    np.testing.assert_array_equal(result.prepared.in_breast, expected.in_breast)
    np.testing.assert_array_equal(result.prepared.geometry.tile_rows, expected.geometry.tile_rows)
    assert result.prepared.geometry.patch_size == expected.geometry.patch_size
    assert result.mammogram.pixels is result.prepared.pixels  # the pixels crossed once
  assert isinstance(decoded[3][1], NoPixelDataError)  # the failure, typed, with its file
  assert decoded[3][1].path == archive_files[3].path


def test_workers_do_not_import_jax():
  [(_, error)] = decoding.decode_ahead([ProbeInput("probe")], PLAN, workers=1)
  assert error.reason == "jax imported: False"


def test_an_image_whose_decoder_kills_its_worker_is_an_error_and_the_run_goes_on(mias_dir):
  png = mias_dir / "images" / "mdb001.png"
  good = [discovery.Input(f"k{n}", str(png), png.name) for n in range(3)]
  items = [good[0], CrashingInput("crash"), good[1], good[2]]

  decoded = list(decoding.decode_ahead(items, PLAN, workers=2))

  assert [item.key for item, _ in decoded] == ["k0", "crash", "k1", "k2"]
  assert isinstance(decoded[1][1], decoding.DecoderCrashedError)
  assert all(isinstance(r, decoding.DecodedImage) for i, (_, r) in enumerate(decoded) if i != 1)


def test_the_clock_tells_decode_bound_from_device_bound():
  slow = [SlowInput(f"k{n}", seconds=0.3) for n in range(4)]
  waiting = decoding.DecodeClock(1)
  for _ in decoding.decode_ahead(slow, PLAN, workers=1, clock=waiting):
    pass  # a consumer with nothing to do waits for every image
  assert waiting.decode_bound and waiting.verdict().startswith("decode-bound")

  fast = [SlowInput(f"k{n}") for n in range(4)]
  busy = decoding.DecodeClock(1)
  for _ in decoding.decode_ahead(fast, PLAN, workers=1, clock=busy):
    time.sleep(0.3)  # a consumer busy with each image (the devices) never waits
  assert not busy.decode_bound and busy.verdict().startswith("device-bound")
  assert busy.images == 4 and "waiting for decode" in busy.progress()


def test_no_decode_process_competes_with_the_network_on_a_cpu_backend():
  assert decoding.auto_workers("cpu", cores=16) == 0
  assert decoding.auto_workers("gpu", cores=16) == 15  # every core but the one feeding the device
  assert decoding.auto_workers("tpu", cores=1) == 1
