"""Tracking: MLflow runs, plots, failure records and reports."""
