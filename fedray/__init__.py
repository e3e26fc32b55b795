"""fedray: privacy-preserving federated fine-tuning on Ray, Hydra and MLflow."""

__version__ = "0.1.0"
