"""The networks and their training: on-device preprocessing and the morphological speck
detectors, the architectures and their registry, CPU tuning, checkpoints, the jitted
data-parallel training loop, and the trained classifier that evaluation and scoring load."""
