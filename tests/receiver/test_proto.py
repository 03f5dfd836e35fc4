"""Our ALS wire-format messages: generated code is current and parses Envoy's field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_are_current(tmp_path: Path) -> None:
    """scripts/gen_proto.sh reproduces the committed *_pb2 modules exactly."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    generated = sorted((tmp_path / "als2otel" / "receiver" / "_proto").glob("*_pb2.py*"))
    assert [p.name for p in generated] == [
        "accesslog_pb2.py",
        "accesslog_pb2.pyi",
        "als_pb2.py",
        "als_pb2.pyi",
        "core_pb2.py",
        "core_pb2.pyi",
    ]
    for path in generated:
        committed = ROOT / "src" / "als2otel" / "receiver" / "_proto" / path.name
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run scripts/gen_proto.sh"


def test_packages_are_envoys() -> None:
    """Message full names are Envoy's, so the v3 method's types are the ones Envoy sends."""
    from als2otel.receiver._proto import accesslog_pb2, als_pb2, core_pb2

    assert (
        als_pb2.StreamAccessLogsMessage.DESCRIPTOR.full_name
        == "envoy.service.accesslog.v3.StreamAccessLogsMessage"
    )
    assert accesslog_pb2.AccessLogCommon.DESCRIPTOR.fields_by_name["access_log_type"].number == 33
    assert (
        accesslog_pb2.AccessLogCommon.DESCRIPTOR.fields_by_name["downstream_direct_remote_address"].number
        == 20
    )
    assert core_pb2.Node.DESCRIPTOR.full_name == "envoy.config.core.v3.Node"
