"""Prediction: load trained models, run them on images, folders and videos."""
