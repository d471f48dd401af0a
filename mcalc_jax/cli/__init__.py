"""Command-line jobs: one module per job, each a thin layer over the library."""
