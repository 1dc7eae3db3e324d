"""Prefect flows composing the tasks in ``tasks/``: ingest_corpus, build_default, ..."""
