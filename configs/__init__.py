"""Experiment configurations as code, shipped in the package as `mcalc_jax.configs`.

Jobs take a file and, after a colon, its arguments (`--config=configs/default.py:task=2,model=resnet34`);
from outside a checkout, `configs/NAME.py` names the installed copy.
"""
