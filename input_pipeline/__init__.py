"""From mammograms (DICOM, PNG, PGM) and their findings to batches of patches."""
