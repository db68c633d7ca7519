"""Study metrics: classification (with bootstrap CIs), segmentation, detection, and their statistics."""
