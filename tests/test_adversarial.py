"""An archive never stops the job: odd entries, bombs, crashes, two writers, mixed settings.

Small stand-ins for what an adversarial run against `mcalc-score`, `mcalc-froc` and
`mcalc-rerank` found: limits set low instead of real bombs, a speck-counting fake network, and
real processes only where a process must die (the crash loop) or print (one-line errors).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from input_pipeline import mammogram, manifest
from input_pipeline.mammogram import SizeLimits
from mcalc_jax.archives import archive, discovery, output_folder, scored
from mcalc_jax.whole_image import scoring
from tests.test_mammogram import phantom, write_dicom
from tests.test_scoring import PATCH, speck_probabilities, synthetic_mammogram

REPO = pathlib.Path(__file__).resolve().parents[1]


def good_png(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A small 12-bit mammogram with one speck cluster."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = synthetic_mammogram((400, 300), clusters=[(200, 100)], seed=seed).pixels
  Image.fromarray(pixels).save(path)
  return path


def speck_scorer(stride: int | None = None) -> scoring.Scorer:
  return scoring.Scorer(speck_probabilities, patch_size=PATCH, stride=stride, batch_size=64)


def rows_of(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_odd_entries_each_give_one_error_row_and_the_batch_goes_on(tmp_path, monkeypatch, caplog):
  root = tmp_path / "archive"
  good = [good_png(root / "a.png", 0), good_png(root / "z" / "b.png", 1)]
  os.mkfifo(root / "fifo.dcm")
  os.mkfifo(root / "pipe")  # no suffix: never opened to look for a DICOM preamble
  (root / "loop").symlink_to(root / "loop")
  (root / "gone").symlink_to(root / "missing")
  with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name
    f.write(b"not a png")
  (root / "locked").mkdir()
  scandir = os.scandir

  def unlistable(path):  # as root, chmod cannot make a folder unlistable
    if os.fspath(path).endswith("locked"):
      raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return scandir(path)

  monkeypatch.setattr(os, "scandir", unlistable)
  inputs = discovery.find_inputs(str(root))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "out"), keep_identifiers=True)

  scores, errors = (
    rows_of(tmp_path / "out" / "scores.csv"),
    rows_of(tmp_path / "out" / "errors.csv"),
  )
  assert [r["path"] for r in scores] == ["a.png", "z/b.png"]
  reasons = {r["path"]: r["reason"] for r in errors}
  assert len(errors) == len(inputs) - len(good) == 6
  assert "(a FIFO)" in reasons["fifo.dcm"] and "(a FIFO)" in reasons["pipe"]
  assert "symbolic links" in reasons["loop"] and "no such file" in reasons["gone"]
  assert "neither DICOM" in reasons["caf\\udce9.png"]
  assert "caf\\udce9.png" in caplog.text.encode().decode()  # the log stays UTF-8 too
  assert "the folder cannot be listed (Permission denied)" in reasons["locked"]
  assert [i.relative_path for i in discovery.find_inputs(str(good[1]))] == ["b.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_read_permission_is_one_error_row(tmp_path):
  root = tmp_path / "archive"
  good_png(root / "a.png")
  (root / "secret").write_bytes(b"\0" * 132)
  (root / "secret").chmod(0)
  inputs = discovery.find_inputs(str(root))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "out"))

  [error] = rows_of(tmp_path / "out" / "errors.csv")
  assert "Permission denied" in error["reason"]


def test_a_header_claiming_a_huge_image_is_an_error_row_before_decoding(tmp_path, monkeypatch):
  root = tmp_path / "archive"
  good_png(root / "a.png")
  write_dicom(root / "bomb.dcm", phantom(), Rows=20_000, Columns=20_000)  # 6 KB of pixels
  decoded = []
  monkeypatch.setattr(mammogram, "pixel_array", lambda ds: decoded.append(ds) or phantom())
  inputs = discovery.find_inputs(str(root), SizeLimits(max_pixels=1_000_000))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "out"), num_workers=0)

  [error] = rows_of(tmp_path / "out" / "errors.csv")
  assert error["error"] == "ImageTooLargeError" and "20000 x 20000" in error["reason"]
  assert len(rows_of(tmp_path / "out" / "scores.csv")) == 1 and not decoded


@dataclasses.dataclass(frozen=True)
class Poison:
  """An image whose decoding kills the process it is decoded in (as the OOM killer would)."""

  key: str
  path: str
  relative_path: str = "poison.dcm"
  annotations: tuple = ()

  def read(self, with_header: bool = False):
    os._exit(137)


def score_with_poison(folder: str, output: str) -> None:
  """One run of the crash-loop test, in its own process: the archive, a poisonous image second,
  decoded in this process (as on a CPU backend)."""
  inputs = discovery.find_inputs(folder)
  poison = Poison(discovery.image_key("poison.dcm"), os.path.join(folder, "poison.dcm"))
  archive.score_archive(speck_scorer(), [inputs[0], poison, *inputs[1:]], output, num_workers=0)


def test_an_image_that_kills_the_process_is_skipped_with_its_row_on_resume(tmp_path):
  root, output = tmp_path / "archive", tmp_path / "out"
  good = [good_png(root / f"{n}.png", n) for n in range(3)]
  code = (
    f"from tests.test_adversarial import score_with_poison as s; s({str(root)!r}, {str(output)!r})"
  )

  def run() -> int:
    command = [sys.executable, "-c", code]
    return subprocess.run(command, cwd=REPO, capture_output=True, timeout=300).returncode

  # It dies with the poison in flight, dies again retrying it alone, then skips it.
  assert [run(), run(), run()] == [137, 137, 0]
  [error] = rows_of(output / "errors.csv")
  assert error["key"] == discovery.image_key("poison.dcm")
  assert error["error"] == "CrashedRunError" and "stopped the previous run" in error["reason"]
  assert len(rows_of(output / "scores.csv")) == len(good)


def test_images_in_flight_when_a_run_was_killed_are_retried_not_failed(tmp_path):
  root, output = tmp_path / "archive", tmp_path / "out"
  inputs = [
    discovery.Input(f"k{n}", str(good_png(root / f"{n}.png", n)), f"{n}.png") for n in range(3)
  ]
  output.mkdir()
  (output / "journal.csv").write_text("k0,scoring\nk1,decoding alone\nk2,waiting\n")
  archive.score_archive(speck_scorer(), inputs, str(output))

  assert [r["key"] for r in rows_of(output / "scores.csv")] == ["k0", "k2"]
  [error] = rows_of(output / "errors.csv")
  assert error["key"] == "k1" and "died while decoding it, twice" in error["reason"]


def test_a_second_writer_refuses_in_one_line(tmp_path):
  good_png(tmp_path / "archive" / "a.png")
  inputs = discovery.find_inputs(str(tmp_path / "archive"))
  output = str(tmp_path / "out")
  refused = pytest.raises(output_folder.OutputFolderError, match="another mcalc-score process")
  with output_folder.claimed(output, {}), refused:
    archive.score_archive(speck_scorer(), inputs, output)
  assert not os.path.exists(os.path.join(output, "scores.csv"))


def test_a_resume_with_another_stride_refuses_and_mixes_nothing(tmp_path):
  root = tmp_path / "archive"
  inputs = [
    discovery.Input(f"k{n}", str(good_png(root / f"{n}.png", n)), f"{n}.png") for n in range(2)
  ]
  output = str(tmp_path / "out")
  archive.score_archive(speck_scorer(stride=56), inputs[:1], output)

  with pytest.raises(output_folder.OutputFolderError, match="stride_pixels=56.*stride_pixels=112"):
    archive.score_archive(speck_scorer(), inputs, output)
  assert [r["key"] for r in rows_of(tmp_path / "out" / "scores.csv")] == ["k0"]
  archive.score_archive(speck_scorer(stride=56), inputs, output)  # the same settings resume
  assert len(rows_of(tmp_path / "out" / "scores.csv")) == 2


@pytest.mark.parametrize("where", ["the input itself", "inside", "inside through a link"])
def test_an_output_inside_the_input_refuses(tmp_path, where):
  root = tmp_path / "archive"
  good_png(root / "a.png")
  (tmp_path / "link").symlink_to(root)
  output = {
    "the input itself": root,
    "inside": root / "scores",
    "inside through a link": tmp_path / "link" / "scores",
  }[where]
  options = archive.ScoreOptions(workdir="no run needed", input=str(root), output=str(output))

  with pytest.raises(output_folder.OutputFolderError, match="the output lies inside --input"):
    archive.score_job(options)
  assert sorted(p.name for p in root.iterdir()) == ["a.png"]


def test_froc_outputs_key_patients_by_a_salted_hash_unless_asked(tmp_path):
  root = tmp_path / "archive"
  findings = [
    manifest.Finding(f"MRN-00{n}", f"{n}.png", "c1", "calcification", "benign", 100, 200, 40)
    for n in range(2)
  ]
  for n in range(2):
    good_png(root / f"{n}.png", n)
  manifest.write_manifest(root / "manifest.csv", findings)
  inputs = discovery.find_inputs(str(root / "manifest.csv"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "scores"), overlays=False)

  def written(folder: str, **kwargs) -> str:
    scored.evaluate_scored_folder(
      tmp_path / "scores", root / "manifest.csv", tmp_path / folder, resamples=5, **kwargs
    )
    return "".join(p.read_text() for p in (tmp_path / folder).iterdir() if p.suffix != ".png")

  hidden, again = written("froc"), written("again")
  assert "MRN-00" not in hidden and "patient-" in hidden
  assert hidden == again  # the same manifest gives the same pseudonyms
  assert "MRN-001" in written("kept", keep_identifiers=True)


@pytest.mark.parametrize(
  "job, arguments, named",
  [
    ("froc", ["--scores={scores}", "--manifest={manifest}"], "{scores}/{key}.npz"),
    (
      "rerank",
      ["--scores={scores}", "--manifest={manifest}", "--output={tmp}/no/r.json"],
      "{tmp}/no",
    ),
    ("score", ["--workdir=no_run", "--input={root}", "--output={root}/out"], "{root}/out"),
  ],
)
def test_user_errors_end_a_job_in_one_line_naming_the_path(tmp_path, job, arguments, named):
  root, scores = tmp_path / "archive", tmp_path / "scores"
  good_png(root / "a.png")
  manifest.write_manifest(root / "manifest.csv", [manifest.Finding("p", "a.png")])
  key = discovery.image_key("a.png")
  scores.mkdir()
  (scores / f"{key}.npz").write_bytes(b"PK\x03\x04 cut short by a full disk")
  values = dict(root=root, scores=scores, manifest=root / "manifest.csv", tmp=tmp_path, key=key)
  command = [sys.executable, "-m", f"mcalc_jax.cli.{job}", *(a.format(**values) for a in arguments)]

  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"mcalc-{job}: {named.format(**values)}")
