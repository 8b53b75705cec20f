"""Sampling: prompts x seeds with the base model or any adapters, deterministic per (prompt, seed) (`sampler`), and
labelled image grids (`grids`).
"""
