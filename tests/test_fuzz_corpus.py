"""The fuzz harness's seed corpus (and every crash it ever found), as plain regression tests.

``make fuzz`` runs ``fuzz/fuzz_protocol.py`` under atheris; this test needs no atheris and
runs each file of ``fuzz/corpus`` through the same ``check`` the fuzzer calls.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).parent.parent / "fuzz" / "fuzz_protocol.py"


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_protocol", HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_protocol", module)
    spec.loader.exec_module(module)
    return module


harness = _harness()


@pytest.mark.parametrize("path", harness.corpus_files(), ids=lambda path: path.name)
def test_corpus_file(path: Path) -> None:
    harness.check(path.read_bytes())


def test_corpus_is_not_empty() -> None:
    assert len(harness.corpus_files()) >= 10
