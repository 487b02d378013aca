"""Evaluators: retrieval metrics over encoded queries and docs."""
