"""Training: Lightning modules, two-stage fine-tuning, feature cache, the fold loop of a run."""
