"""Archive scoring end to end against the model alone: does decoding keep the devices fed?

  python -m tools.benchmarks.end_to_end [--model=alexnet] [--images=6] [--workers=0,1,2,all]
      [--cbis=../shared/data/cbis-ddsm-mg-dicom] [--json=docs/end_to_end.json]

For each archive, images per second of
  - model only: `Scorer.score_stream` over images already decoded and prepared in memory (what
    the devices and the scorer's own host work allow);
  - end to end: `archive.score_archive` on the folder (read, decode, tile, score, write the npz
    grids and the CSV row; overlays off), decoding on N worker processes (0: one thread of the
    scoring process, as before worker processes), and the share of its time the scorer waited
    for decoded images (`decoding.DecodeClock`);
with end-to-end / model-only as a ratio, measured in one process, interleaved. Archives: full-size
4000x3000 12-bit synthetic DICOMs (uncompressed and RLE Lossless, written to a temporary
folder) and the shared CBIS-DDSM RLE files, if present. Also the decode time of one RLE image
with pydicom's own decoder and with pylibjpeg-rle (the `codecs` extra), when installed.
The network is randomly initialised (speed needs no weights), the paper's preprocessing, stride
112, background tiles skipped as in `mcalc-score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import tempfile
import time

import jax
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from mcalc_jax.archives import archive, discovery
from mcalc_jax.whole_image import scoring
from tools.benchmarks.scoring import SHAPE, random_classifier, synthetic_mammogram


def write_dicoms(folder: pathlib.Path, count: int, syntax: pydicom.uid.UID) -> None:
  """`count` full-size 12-bit MG DICOMs (different noise each) in `syntax`."""
  folder.mkdir(parents=True)
  for n in range(count):
    pixels = synthetic_mammogram(SHAPE, seed=n).pixels
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = (
      pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
    )
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ImageLaterality, ds.ViewPosition = "MG", "L", "CC"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing = [0.07, 0.07]
    ds.PixelData = pixels.tobytes()
    if syntax != ExplicitVRLittleEndian:
      ds.compress(syntax, encoding_plugin="pydicom")
    ds.save_as(folder / f"image{n:03d}.dcm", enforce_file_format=True)


def model_only(scorer: scoring.Scorer, inputs: list[discovery.Input]) -> float:
  """Images/s of the scorer on images decoded and prepared beforehand."""
  prepared = [(i.key, scorer.prepare(i.read()[0])) for i in inputs]
  start = time.perf_counter()
  for _ in scorer.score_stream(prepared):
    pass
  return len(inputs) / (time.perf_counter() - start)


def end_to_end(
  scorer: scoring.Scorer, inputs: list[discovery.Input], workers: int, output: pathlib.Path
) -> tuple[float, float]:
  """Images/s of `score_archive` into a fresh folder, and the share of time it waited."""
  start = time.perf_counter()
  clock = archive.score_archive(scorer, inputs, str(output), overlays=False, num_workers=workers)
  return len(inputs) / (time.perf_counter() - start), clock.wait_fraction


def decode_seconds(path: pathlib.Path) -> dict[str, float]:
  """Seconds to decode one RLE image with each installed plugin (best of 3)."""
  ds = pydicom.dcmread(path)
  decoder = pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID)
  seconds = {}
  for plugin in decoder.available_plugins:
    runs = []
    for _ in range(3):
      start = time.perf_counter()
      pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
      runs.append(time.perf_counter() - start)
    seconds[plugin] = min(runs)
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="alexnet")
  parser.add_argument("--images", type=int, default=6)
  parser.add_argument("--workers", default="0,1,2,all")
  parser.add_argument("--cbis", default="../shared/data/cbis-ddsm-mg-dicom")
  parser.add_argument("--json", default="")
  parser.add_argument("--archives", default="", help="only these (comma-separated name prefixes)")
  args = parser.parse_args()
  cores = os.cpu_count() or 1
  workers = [cores if w == "all" else int(w) for w in args.workers.split(",")]
  scorer = scoring.Scorer(random_classifier(args.model), stride=112)
  scorer.score(synthetic_mammogram((1000, 800)))  # compiles the network and the tile cutter
  print(
    f"{args.model}, stride 112, devices: {jax.local_device_count()} x "
    f"{jax.devices()[0].device_kind}, {cores} cores; images/s (end to end / model only)"
  )
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    archives = {}
    for name, syntax in (
      ("synthetic, uncompressed", ExplicitVRLittleEndian),
      ("synthetic, RLE", RLELossless),
    ):
      folder = root / name.replace(", ", "_")
      write_dicoms(folder, args.images, syntax)
      archives[name] = discovery.find_inputs(str(folder))
    cbis = sorted(pathlib.Path(args.cbis).glob("*.dcm"))
    if cbis:  # each file several times (own keys) to as many images as the others
      found = discovery.find_inputs(args.cbis)
      repeats = [
        dataclasses.replace(i, key=f"{i.key}-{n}") for n in range(args.images) for i in found
      ]
      archives["CBIS-DDSM RLE"] = repeats[: max(args.images, len(found))]
      print("decode one CBIS RLE image, s:", decode_seconds(cbis[0]))
    wanted = [a for a in args.archives.split(",") if a]
    for name, inputs in archives.items():
      if wanted and not any(name.startswith(a) for a in wanted):
        continue
      reference = model_only(scorer, inputs)
      for w in workers:
        rate, waited = end_to_end(scorer, inputs, w, root / "out" / f"{name}_{w}")
        row = {
          "archive": name,
          "images": len(inputs),
          "workers": w,
          "model_only": reference,
          "end_to_end": rate,
          "ratio": rate / reference,
          "waited": waited,
        }
        rows.append(row)
        print(
          f"{name}: {w} worker(s) {rate:.3f} / {reference:.3f} images/s = {rate / reference:.2f} "
          f"(waited for decode {waited:.0%})",
          flush=True,
        )
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  main()
