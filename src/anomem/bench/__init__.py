"""Benchmarks: protocols, the resumable runner, baselines' tables and reports."""
