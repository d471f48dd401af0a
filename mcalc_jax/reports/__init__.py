"""Patch-level evaluation and reports: a run's split evaluated the way the paper reports it (and
with honest intervals), and Table 2 rebuilt from evaluated runs, with the whole-image rows of a
cross-validation beside it."""
