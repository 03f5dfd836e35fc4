"""The README, CONTRIBUTING.md and docs/ stay true: every link resolves, the configuration the
README shows is valid, and the OpenTelemetry logger's attribute table is the code's list."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from als2otel import config as cfg

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_in_the_repository(doc: Path) -> None:
    """Each relative link (images included) names a file or folder that exists."""
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_the_readme_configuration_is_valid() -> None:
    """The minimal configuration the README shows passes check-config's validation."""
    (block,) = re.findall(
        r"## A minimal configuration.*?```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    config = cfg.parse(yaml.safe_load(block), {})
    assert config.exporters.otlp.sending_queue.storage and config.topology.trace_url


def test_the_attribute_table_is_the_codes_list() -> None:
    """docs/opentelemetry-logger.md holds exactly the table scripts/otel_attributes.py makes."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import otel_attributes

    doc = otel_attributes.DOC.read_text()
    assert otel_attributes.with_table(doc) == doc, "run python scripts/otel_attributes.py --write"
