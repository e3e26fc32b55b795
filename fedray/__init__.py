"""fedray: privacy-preserving federated fine-tuning on Ray, configured by Hydra, tracked in MLflow."""

__version__ = "0.1.0"
