"""The attribute table of docs/opentelemetry-logger.md, made from the code's list.

``python scripts/otel_attributes.py`` prints it; ``--write`` puts it into the doc between its
markers; tests/test_docs.py checks that the doc holds exactly what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from als2otel.receiver.otlp_logs import ATTRIBUTES  # noqa: E402

DOC = ROOT / "docs" / "opentelemetry-logger.md"
BEGIN = "<!-- attribute table: made by scripts/otel_attributes.py from receiver/otlp_logs.py ATTRIBUTES -->"
END = "<!-- end of the attribute table -->"


def table() -> str:
    rows = [f"| `{name}` | `{operator}` |" for name, operator in ATTRIBUTES.items()]
    return "\n".join(["| attribute | Envoy command operator |", "| --- | --- |", *rows])


def with_table(doc: str) -> str:
    """The doc with its table (between the markers) made anew."""
    before, _, rest = doc.partition(BEGIN)
    _, _, after = rest.partition(END)
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.write_text(with_table(DOC.read_text()))
    else:
        print(table())
