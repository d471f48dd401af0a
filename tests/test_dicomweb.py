"""Scoring from a real PACS (Orthanc, DICOMweb) and sending DICOM results back, faults included."""

from __future__ import annotations

import collections
import dataclasses
import http.server
import pathlib
import threading
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from input_pipeline import synthetic
from mcalc_jax.archives import archive, dicom_results, dicomweb, discovery
from mcalc_jax.whole_image import scoring
from tests.orthanc import Orthanc, free_port, orthanc  # noqa: F401 (fixture)
from tests.test_dicom_results import text_items
from tests.test_score_cli import checkpoint, finish, mcalc_score, rows_of  # noqa: F401 (fixture)
from tests.test_scoring import PATCH, speck_probabilities

SYNTHETIC = synthetic.SyntheticOptions(image_size=(600, 450))
TIMING_COLUMNS = ("key", "read_seconds", "score_seconds")


def cohort(root: pathlib.Path) -> dict[str, pydicom.Dataset]:
  """Four synthetic MG files (one study, 2024) in root/synthetic; headers by path from root."""
  synthetic.generate_cohort(root / "synthetic", num_patients=1, seed=5, options=SYNTHETIC)
  return {
    p.relative_to(root).as_posix(): pydicom.dcmread(p, stop_before_pixels=True)
    for p in sorted((root / "synthetic").rglob("*.dcm"))
  }


def later_study(source: pathlib.Path, path: pathlib.Path) -> None:
  """A copy of `source` as an instance of another study, dated outside the range scored."""
  ds = pydicom.dcmread(source)
  ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
  ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
  ds.StudyDate = "20250601"
  ds.save_as(path)


def test_scores_from_orthanc_match_the_folder_and_the_results_come_back(
  tmp_path,
  orthanc,  # noqa: F811 (the fixture imported above)
  checkpoint,  # noqa: F811
  cbis_dir,
):
  folder = tmp_path / "archive"
  headers = cohort(folder)
  for path in sorted(cbis_dir.glob("*.dcm")):  # digitised film: other studies, 2016
    (folder / "cbis").mkdir(exist_ok=True)
    (folder / "cbis" / path.name).symlink_to(path)
    headers[f"cbis/{path.name}"] = pydicom.dcmread(path, stop_before_pixels=True)
  for relative in headers:
    orthanc.upload(folder / relative)
  later_study(folder / next(iter(headers)), tmp_path / "later.dcm")
  orthanc.upload(tmp_path / "later.dcm")

  archive.score_job(
    archive.ScoreOptions(
      workdir=str(checkpoint), input=str(folder), output=str(tmp_path / "f"), overlays=False
    )
  )
  output = tmp_path / "web"
  finish(
    mcalc_score(
      f"--workdir={checkpoint}",
      f"--dicomweb_url={orthanc.dicomweb}",
      "--dicomweb_study_dates=20160101-20241231",
      f"--output={output}",
      "--dicom_results",
      f"--stow_url={orthanc.dicomweb}",
      "--nooverlays",
      "--num_workers=2",  # retrieval and decoding in worker processes, the folder's on a thread
    )
  )

  sop_of = {discovery.image_key(k): h.SOPInstanceUID for k, h in headers.items()}
  by_folder = {sop_of[r["key"]]: r for r in rows_of(tmp_path / "f" / "scores.csv")}
  by_server = {r["key"]: r for r in rows_of(output / "scores.csv")}
  assert len(by_folder) == 8 and sorted(by_server) == sorted(map(dicomweb.instance_key, by_folder))
  for sop, row in by_folder.items():
    same = {
      k: v for k, v in by_server[dicomweb.instance_key(sop)].items() if k not in TIMING_COLUMNS
    }
    assert same == {k: v for k, v in row.items() if k not in TIMING_COLUMNS}
  assert not rows_of(output / "errors.csv")

  stored = stored_results(orthanc)
  assert sorted(stored) == sorted(by_folder)  # one SEG and one SR per source, none for "later"
  for sop, (seg, sr) in stored.items():
    source, row = headers_by_sop(headers)[sop], by_folder[sop]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert {seg.SOPInstanceUID, sr.SOPInstanceUID}.isdisjoint({source.SOPInstanceUID})
    assert seg.pixel_array.max() / 255 == pytest.approx(float(row["task1_max"]), abs=0.5 / 255)
    assert measured_score(sr) == pytest.approx(float(row["task1_max"]), abs=1e-6)
    assert text_items(sr)["Algorithm Name"] == "mcalc_jax resnet18"
  local = {pydicom.dcmread(p).SOPInstanceUID for p in (output / "dicom").glob("*.dcm")}
  assert local == {d.SOPInstanceUID for pair in stored.values() for d in pair}
  listed = orthanc.series_of_modality("SR")  # what Orthanc's explorer lists for the studies
  assert sum(len(s["Instances"]) for s in listed) == 8


def headers_by_sop(headers: dict[str, pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
  return {h.SOPInstanceUID: h for h in headers.values()}


def stored_results(server: Orthanc) -> dict[str, tuple[pydicom.Dataset, pydicom.Dataset]]:
  """The SEG and SR instances on the server (WADO-RS), by the SOP Instance UID they refer to."""
  client = dicomweb.Server(server.dicomweb).client()
  found: dict[str, dict[str, pydicom.Dataset]] = collections.defaultdict(dict)
  for modality in ("SEG", "SR"):
    for series in client.search_for_series(search_filters={"Modality": modality}):
      study, uid = series["0020000D"]["Value"][0], series["0020000E"]["Value"][0]
      for ds in client.retrieve_series(study, uid):
        found[referenced_sop(ds)][modality] = ds
  return {sop: (kinds["SEG"], kinds["SR"]) for sop, kinds in found.items()}


def referenced_sop(ds: pydicom.Dataset) -> str:
  if ds.Modality == "SEG":
    return ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
  evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
  return evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def measured_score(sr: pydicom.Dataset) -> float:
  """The image-level P(calcification) of a report: its first numeric measurement."""
  for item in iterate(sr):
    if item.get("ValueType") == "NUM":
      return float(item.MeasuredValueSequence[0].NumericValue)
  raise AssertionError("no measurement in the report")


def iterate(dataset: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
  for item in dataset.get("ContentSequence", []):
    yield item
    yield from iterate(item)


class FaultyProxy(http.server.ThreadingHTTPServer):
  """A DICOMweb front of Orthanc that fails as networks do, for chosen SOP Instance UIDs.

  `failing` get HTTP 503 every time; `dropped` have their connection closed without an answer
  on the first retrieve; the first `stow_failures` STOW-RS posts get HTTP 503.
  """

  def __init__(self, upstream: str, failing: set[str], dropped: set[str], stow_failures: int):
    super().__init__(("127.0.0.1", free_port()), _ProxyHandler)
    self.upstream, self.failing, self.dropped = upstream, set(failing), set(dropped)
    self.stow_failures = stow_failures
    self.retrieved: collections.Counter[str] = collections.Counter()
    self.lock = threading.Lock()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"

  def fault(self, method: str, path: str) -> str:
    """'503', 'drop' or '' for one request, counting retrieves per SOP Instance UID."""
    with self.lock:
      if method == "POST":
        self.stow_failures -= 1
        return "503" if self.stow_failures >= 0 else ""
      sop = path.split("/instances/")[-1].split("?")[0] if "/instances/" in path else ""
      if not sop:
        return ""
      self.retrieved[sop] += 1
      if sop in self.failing:
        return "503"
      if sop in self.dropped:
        self.dropped.discard(sop)
        return "drop"
      return ""


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
  server: FaultyProxy

  def do_GET(self) -> None:
    self._relay("GET")

  def do_POST(self) -> None:
    self._relay("POST")

  def _relay(self, method: str) -> None:
    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
    fault = self.server.fault(method, self.path)
    if fault == "drop":
      self.close_connection = True
      return  # no status line at all: the client sees the connection closed
    if fault == "503":
      self.send_error(503)
      return
    headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
    answer = requests.request(
      method, self.server.upstream + self.path[len("/dicom-web") :], data=body, headers=headers
    )
    self.send_response(answer.status_code)
    self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
    self.send_header("Content-Length", str(len(answer.content)))
    self.end_headers()
    self.wfile.write(answer.content)

  def log_message(self, *args) -> None:  # quiet
    pass


def test_failing_instances_are_listed_and_a_rerun_resumes_by_sop_uid(tmp_path, orthanc):  # noqa: F811
  headers = cohort(tmp_path / "archive")
  for relative in headers:
    orthanc.upload(tmp_path / "archive" / relative)
  sops = sorted(h.SOPInstanceUID for h in headers.values())
  proxy = FaultyProxy(orthanc.dicomweb, failing={sops[0]}, dropped={sops[1]}, stow_failures=1)
  threading.Thread(target=proxy.serve_forever, daemon=True).start()
  server = dicomweb.Server(proxy.url, tries=3, backoff_seconds=0.01)
  output = tmp_path / "out"
  identity = dicom_results.ModelIdentity("speck", "run", version="0.1.0")

  def run() -> None:
    inputs = dicomweb.find_instances(server, study_dates="20240101")
    writer = dicom_results.DicomResults(str(output / "dicom"), identity, store=server.store)
    scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH, batch_size=64)
    archive.score_archive(scorer, inputs, str(output), results=writer)

  try:
    run()
    [error] = rows_of(output / "errors.csv")
    assert error["key"] == dicomweb.instance_key(sops[0]) and error["error"] == "DicomwebError"
    assert error["reason"] == "WADO-RS retrieve failed after 3 tries: HTTP 503 Service Unavailable"
    assert sorted(r["key"] for r in rows_of(output / "scores.csv")) == sorted(
      map(dicomweb.instance_key, sops[1:])
    )
    assert (proxy.retrieved[sops[0]], proxy.retrieved[sops[1]]) == (3, 2)
    assert len(stored_results(orthanc)) == 3
    first = (output / "scores.csv").read_text()
    written = {p.name: p.stat().st_mtime_ns for p in (output / "dicom").iterdir()}

    proxy.failing.clear()  # the server is back; a rerun that forgets the errors retries them
    proxy.retrieved.clear()
    (output / "errors.csv").unlink()
    run()
  finally:
    proxy.shutdown()
    proxy.server_close()

  assert (output / "scores.csv").read_text().startswith(first)
  assert len(rows_of(output / "scores.csv")) == 4 and not rows_of(output / "errors.csv")
  assert list(proxy.retrieved) == [sops[0]]  # only the missing instance was fetched again
  assert all(
    written[p.name] == p.stat().st_mtime_ns
    for p in (output / "dicom").iterdir()
    if p.name in written
  )
  assert sorted(stored_results(orthanc)) == sops
  np.testing.assert_equal(len(list((output / "dicom").iterdir())), 8)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"dicomweb_url": "http://pacs/dicom-web"}, "exactly one of --input and --dicomweb_url"),
    ({"input": ""}, "exactly one of --input and --dicomweb_url"),
    ({"stow_url": "http://pacs/dicom-web"}, "needs --dicom_results"),
  ],
)
def test_a_job_refuses_contradictory_sources_before_loading_anything(changes, message):
  options = archive.ScoreOptions(workdir="/nonexistent", input="/nonexistent", output="/tmp/x")
  with pytest.raises(ValueError, match=message):
    archive.score_job(dataclasses.replace(options, **changes))
