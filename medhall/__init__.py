"""medhall: measure and reduce hallucinations in medical vision-language models.

The library holds all logic as plain functions over Arrow tables; Prefect lives in
``flows/`` and ``tasks/``. Heavy libraries (torch, transformers, peft, bert_score) are
imported inside the functions that use them, so importing ``medhall`` stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medhall")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
