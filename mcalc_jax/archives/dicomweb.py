"""Mammograms from a DICOMweb server (a PACS or vendor-neutral archive), and results sent back.

`find_instances(server, ...)` lists the MG instances of the studies asked for (QIDO-RS: a
study-date range, or StudyInstanceUIDs) as `DicomwebInput`s, which `mcalc_jax.archives.archive` scores
like files: each one retrieves itself (WADO-RS, in the transfer syntax it is stored in) when a
decoder (`mcalc_jax.archives.decoding`: a worker process, or a thread) asks for it. Its key is a hash of its SOP Instance UID, so a rerun against the same
server skips what an earlier run finished, whatever order the server lists instances in.

Every request is retried with exponential backoff on what a busy or restarting server does
(connection dropped or refused, timeouts, HTTP 408/429/5xx); what still fails raises
`DicomwebError`, one line that names the operation and the cause but no UID or URL (the archive
records it against the instance's key and goes on). `Server.store` is STOW-RS with the same rule.
Needs the `dicom` extra (`dicomweb-client`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from input_pipeline.errors import MammogramError
from input_pipeline.mammogram import Mammogram, read_mammogram

T = TypeVar("T")

_RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
# Mammograms are compressed already or barely compressible: gzip on the server costs more time
# than it saves on a LAN (Orthanc gzips by default: 0.52 s per 2 MB instance here, 0.05 s without).
_HEADERS = {"Accept-Encoding": "identity"}
_PAGE = 500  # QIDO-RS results per request
_AS_STORED = (("application/dicom", "*"),)  # no transcoding on the server: pixels as archived
_clients = threading.local()

# dicomweb-client logs every UID it requests at INFO level; UIDs stay out of our logs.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class DicomwebError(Exception):
  """A DICOMweb request that failed after its retries (the message carries no UID or URL)."""


@dataclasses.dataclass(frozen=True)
class Server:
  """A DICOMweb base URL and how hard to try; picklable, one HTTP session per thread."""

  url: str
  tries: int = 4
  backoff_seconds: float = 0.5  # waits 0.5, 1, 2, ... seconds between tries
  timeout_seconds: float = 60.0

  def __post_init__(self):
    if self.tries < 1:
      raise ValueError(f"DICOMweb tries must be at least 1, got {self.tries}")

  def client(self) -> DICOMwebClient:
    """This thread's client (requests sessions are not shared between threads)."""
    cache = _clients.__dict__.setdefault("by_server", {})
    if self not in cache:
      client = DICOMwebClient(self.url, timeout=self.timeout_seconds, headers=_HEADERS)
      client.set_http_retry_params(retry=False)  # retries are ours: dropped connections too
      cache[self] = client
    return cache[self]

  def call(self, operation: str, request: Callable[[DICOMwebClient], T]) -> T:
    """Runs `request` with retries; raises DicomwebError naming `operation` when it gives up."""
    for attempt in range(1, self.tries + 1):
      try:
        return request(self.client())
      except Exception as e:  # noqa: BLE001 (classified below; the rest re-raised as is)
        if not _retried(e):
          raise DicomwebError(f"{operation} failed: {_describe(e)}") from e
        if attempt == self.tries:
          raise DicomwebError(f"{operation} failed after {attempt} tries: {_describe(e)}") from e
        time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
    raise AssertionError("unreachable: tries >= 1")

  def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
    """STOW-RS of `datasets` (one study); raises DicomwebError if the server refuses any."""
    study = datasets[0].StudyInstanceUID
    response = self.call(
      "STOW-RS store", lambda c: c.store_instances(list(datasets), study_instance_uid=study)
    )
    failed = response.get("FailedSOPSequence", []) if response is not None else []
    if failed:
      reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
      raise DicomwebError(f"STOW-RS store refused {len(failed)} instance(s): reason {reasons}")


def _retried(error: Exception) -> bool:
  """Whether a failure is what a busy, restarting or flaky server does (worth another try)."""
  if isinstance(error, requests.HTTPError):
    return error.response is not None and error.response.status_code in _RETRIED_STATUS
  return isinstance(error, requests.RequestException)  # dropped, refused, timed out, truncated


def _describe(error: Exception) -> str:
  """The cause in a few words, without the URL (which names studies) that requests puts in."""
  if isinstance(error, requests.HTTPError) and error.response is not None:
    return f"HTTP {error.response.status_code} {error.response.reason or ''}".strip()
  return type(error).__name__


def instance_key(sop_instance_uid: str) -> str:
  """The non-identifying name of an instance in the outputs: a hash of its SOP Instance UID."""
  return hashlib.sha1(sop_instance_uid.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DicomwebInput:
  """One instance on a server, which `mcalc_jax.archives.archive` scores like a file (see `read`)."""

  key: str
  path: str  # the instance's WADO-RS URL (only in logs and CSVs with --keep_identifiers)
  relative_path: str  # STUDY/SERIES/SOP UIDs
  server: Server
  study_uid: str
  series_uid: str
  sop_uid: str
  annotations: tuple = ()

  @classmethod
  def of(cls, server: Server, study_uid: str, series_uid: str, sop_uid: str) -> DicomwebInput:
    path = f"{server.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    relative = f"{study_uid}/{series_uid}/{sop_uid}"
    return cls(instance_key(sop_uid), path, relative, server, study_uid, series_uid, sop_uid)

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    """Retrieves the instance (WADO-RS) and decodes it; the header too when asked.

    Raises:
      DicomwebError: the server did not deliver it after the retries.
      MammogramError: it arrived but is no readable mammogram (named by its URL).
    """
    dataset = self.server.call(
      "WADO-RS retrieve",
      lambda c: c.retrieve_instance(
        self.study_uid, self.series_uid, self.sop_uid, media_types=_AS_STORED
      ),
    )
    mammogram = _decode(dataset, self.path)
    if not with_header:
      return mammogram, None
    del dataset.PixelData
    return mammogram, dataset


def _decode(dataset: pydicom.Dataset, name: str) -> Mammogram:
  """Reads a retrieved dataset with the file reader (one decoding path for files and servers)."""
  with tempfile.TemporaryDirectory(prefix="mcalc-wado-") as folder:
    path = os.path.join(folder, "instance.dcm")
    dataset.save_as(path, enforce_file_format=True)
    try:
      return dataclasses.replace(read_mammogram(path), path=name)
    except MammogramError as e:
      raise type(e)(name, e.reason) from e


def find_instances(
  server: Server,
  *,
  study_uids: Sequence[str] = (),
  study_dates: str = "",
  modality: str = "MG",
) -> list[DicomwebInput]:
  """The `modality` instances of the given studies, or of every study in a date range (QIDO-RS).

  `study_dates` is a DICOM date or range (`20240101-20240131`, `20240101-`); with neither
  argument every study holding `modality` is taken. Sorted by UIDs: the same list every run.
  """
  if not study_uids:
    filters = {"ModalitiesInStudy": modality}
    if study_dates:
      filters["StudyDate"] = study_dates
    study_uids = _search(
      server,
      "QIDO-RS study search",
      _STUDY_UID,
      lambda c, **page: c.search_for_studies(search_filters=filters, **page),
    )
  inputs = []
  for study in sorted(set(study_uids)):
    series_uids = _search(
      server,
      "QIDO-RS series search",
      _SERIES_UID,
      lambda c, study=study, **page: c.search_for_series(
        study, search_filters={"Modality": modality}, **page
      ),
    )
    for series in series_uids:
      sop_uids = _search(
        server,
        "QIDO-RS instance search",
        _SOP_UID,
        lambda c, study=study, series=series, **page: c.search_for_instances(study, series, **page),
      )
      inputs += [DicomwebInput.of(server, study, series, sop) for sop in sop_uids]
  return sorted(inputs, key=lambda i: i.relative_path)


def _search(
  server: Server, operation: str, tag: str, search: Callable[..., list[dict]]
) -> list[str]:
  """The sorted values of `tag` over every page of a QIDO-RS search.

  Pages by limit and offset; stops at a short page or one with nothing new, so a server that
  ignores offset (Orthanc's plugin does) is read once rather than forever.
  """
  found: set[str] = set()
  while True:
    offset = len(found)
    page = server.call(operation, lambda c, offset=offset: search(c, limit=_PAGE, offset=offset))
    fresh = {_value(item, tag) for item in page} - found
    found |= fresh
    if len(page) < _PAGE or not fresh:
      return sorted(found)


def _value(item: dict, tag: str) -> str:
  """The first value of `tag` in a DICOM JSON search result."""
  return str(item[tag]["Value"][0])
