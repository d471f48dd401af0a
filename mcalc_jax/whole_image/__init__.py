"""Whole mammograms: where tiles lie (numpy only), scoring them on the devices, the npz grids and
overlays, the cluster FROC and its metric registry, the tile reranker and the reading of each
breast against the other; CAD marks (specks, their clusters, each a mark with a calibrated score)
and their mark FROC. Works on images and grids in memory; reading archives is `archives`."""
