"""Metrics, thresholds and result files."""
