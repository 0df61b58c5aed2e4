"""Metrics, checkpoints, distributed helpers, atomic file writes and logging setup.

Imports neither ``models`` nor ``dataset``.
"""
