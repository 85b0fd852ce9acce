"""Pieces shared by the `nli` and `ser` packages: run helpers, metrics, result files, plots, batching."""
