"""Prefect tasks: thin, shard-level wrappers around ``medhall`` that read and write the store.

A task takes paths, names and config (never DataFrames), calls the library, writes Parquet
artifacts and returns small dicts of artifact names and fingerprints. Cache keys hash
explicit inputs: file fingerprints, config hashes, the store root.
"""
