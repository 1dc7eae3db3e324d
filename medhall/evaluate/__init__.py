"""Evaluation of vision-language models (one module per concern; import the submodules directly)."""
