"""What every stage stands on: crash-safe files and CSV logs, devices and processes, a job's
start-up, TensorBoard writers and figures, the patch metrics with their confidence intervals, and
Platt calibration. Nothing here knows about networks, mammograms or tiles."""
