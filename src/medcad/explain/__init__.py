"""Explainability: Grad-CAM heat-maps (pytorch-grad-cam) for trained models."""
