"""Golden files: expected output kept as JSON under tests/testdata/.

Run with ``UPDATE_GOLDEN=1`` to rewrite them after an intended change, then
review the diff like any other change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).resolve().parent.parent / "testdata"


def assert_golden(name: str, actual: Any) -> None:
    path = TESTDATA / f"{name}.json"
    text = json.dumps(actual, indent=2, sort_keys=True, default=str) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    expected = json.loads(path.read_text())
    assert json.loads(text) == expected, f"output differs from {path}"
