"""Benchmarks: scripts that print a table against an anchor, measured in one run."""
