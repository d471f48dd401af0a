"""A real PACS for the tests: Orthanc with its DICOMweb plugin, on a free localhost port.

Each `orthanc` fixture starts its own server with its own storage folder, so tests cannot see
each other's instances; tests skip, saying why, where Orthanc or its plugin is not installed
(`.ci/run` installs the Debian packages orthanc and orthanc-dicomweb).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

PLUGIN_GLOBS = (
  "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
  "/usr/lib/orthanc/libOrthancDicomWeb.so*",
  "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
_START_SECONDS = 30


@dataclasses.dataclass
class Orthanc:
  """A running Orthanc: its REST root, its DICOMweb root, and the process."""

  url: str
  process: subprocess.Popen

  @property
  def dicomweb(self) -> str:
    return f"{self.url}/dicom-web"

  def upload(self, path: str | pathlib.Path) -> None:
    """Stores one DICOM file through Orthanc's REST API."""
    response = requests.post(f"{self.url}/instances", data=pathlib.Path(path).read_bytes())
    response.raise_for_status()

  def series_of_modality(self, modality: str) -> list[dict]:
    """Orthanc's own listing (the REST API its explorer shows) of the series of `modality`."""
    found = requests.post(
      f"{self.url}/tools/find",
      json={"Level": "Series", "Query": {"Modality": modality}, "Expand": True},
    )
    found.raise_for_status()
    return found.json()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def plugin() -> str:
  """The DICOMweb plugin's shared library, or skips the test saying it is missing."""
  for pattern in PLUGIN_GLOBS:
    if found := sorted(glob.glob(pattern)):
      return found[0]
  pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")


def start(folder: pathlib.Path) -> Orthanc:
  """Starts Orthanc storing into `folder`, localhost only, no authentication; waits for it."""
  executable = shutil.which("Orthanc")
  if executable is None:
    pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
  port = free_port()
  config = {
    "Name": "mcalc-test",
    "StorageDirectory": str(folder / "storage"),
    "IndexDirectory": str(folder / "storage"),
    "HttpPort": port,
    "DicomServerEnabled": False,
    "DicomPort": free_port(),
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": False,
    "HttpCompressionEnabled": False,
    "Plugins": [plugin()],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
  }
  (folder / "orthanc.json").write_text(json.dumps(config))
  log = open(folder / "orthanc.log", "w")  # noqa: SIM115 (the server's lifetime, closed with it)
  process = subprocess.Popen(
    [executable, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
  )
  server = Orthanc(f"http://127.0.0.1:{port}", process)
  deadline = time.monotonic() + _START_SECONDS
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
    try:
      if requests.get(f"{server.dicomweb}/studies", timeout=2).ok:
        return server
    except requests.ConnectionError:
      pass
    time.sleep(0.2)
  process.kill()
  raise RuntimeError(f"Orthanc did not answer in {_START_SECONDS} s")


@pytest.fixture
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
  """A fresh, empty Orthanc for one test."""
  server = start(tmp_path_factory.mktemp("orthanc"))
  try:
    yield server
  finally:
    server.process.terminate()
    try:
      server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      server.process.kill()
