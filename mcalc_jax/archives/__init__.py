"""Archives and DICOM I/O: the images of a folder, manifest or DICOMweb server and their keys,
decoding ahead in worker processes, the resumable `mcalc-score` job, DICOM results (SEG, SR) and
the jobs that read a scored archive back (`mcalc-froc`, `mcalc-rerank`)."""
