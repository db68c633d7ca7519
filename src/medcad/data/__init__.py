"""Data layer: manifests, image I/O, audits, splits, synthetic data."""
