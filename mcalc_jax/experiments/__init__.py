"""Experiments built from the stages below: patient-grouped cross-validation (folds, the
whole-image pass, hard-negative mining) and the demo that runs every job on a synthetic cohort."""
