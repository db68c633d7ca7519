"""Studies: protocols (k-fold, sequential transfer, combined, cross-domain, model comparison) and their results."""
