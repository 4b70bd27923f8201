"""Shared test fixtures: the notebook's `lib` cells loaded as a module, in-process."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from nblib import load_lib_cells  # noqa: E402

NOTEBOOK = Path(os.environ.get("A5_NOTEBOOK", REPO / "assignment5.ipynb"))
# The real CFPB narratives committed under data/ (the notebook's default offline; see data/cfpb_complaints.md).
EMBEDDED_COMPLAINTS = REPO / "data" / "cfpb_complaints_narratives.csv.gz"


@pytest.fixture(scope="session")
def lib() -> types.ModuleType:
    return load_lib_cells(NOTEBOOK)
