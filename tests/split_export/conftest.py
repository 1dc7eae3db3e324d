"""Fixtures: one synthetic dataset (400 images, ~1600 pairs) and its split, shared per module."""

from __future__ import annotations

import pyarrow as pa
import pytest

from medhall.split import split_by_image

from .synthetic import Dataset, make_dataset


@pytest.fixture(scope="package")
def data() -> Dataset:
    return make_dataset(400, seed=7)


@pytest.fixture(scope="package")
def splits(data: Dataset) -> pa.Table:
    return split_by_image(data.images, test_images=200, seed=3)
