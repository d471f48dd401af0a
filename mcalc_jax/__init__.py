"""Microcalcification detection and classification on mammograms, in JAX/Flax."""
