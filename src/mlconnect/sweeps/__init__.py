"""Hyperparameter sweeps: an Optuna study whose trials are ordinary experiments (see docs/SCALING.md)."""
