"""Inference for fine-tuned models and their MLflow pyfunc definitions (models from code)."""
