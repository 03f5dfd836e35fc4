from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import als, certs
from support.otlp_receiver import GrpcOtlpReceiver

from als2otel import config as cfg
from als2otel.app import Bridge

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    """The modules setup.py compiles (its COMPILED and NATIVE_SOURCES), as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    paths = [
        path
        for name in ("COMPILED", "NATIVE_SOURCES")
        for path in next(
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name
        )
    ]
    return [path.removeprefix("src/").rsplit(".", 1)[0].replace("/", ".") for path in paths]


def pytest_configure(config: pytest.Config) -> None:
    """Under ALS2OTEL_EXPECT_COMPILED (make test's second run) every module setup.py compiles
    must be its compiled build: a build that fell back to Python would test nothing new."""
    if not os.environ.get("ALS2OTEL_EXPECT_COMPILED"):
        return
    pure = [
        name for name in compiled_modules() if not str(importlib.import_module(name).__file__).endswith(".so")
    ]
    if pure:
        raise pytest.UsageError(f"ALS2OTEL_EXPECT_COMPILED, but these modules are not compiled: {pure}")


@pytest.fixture
def otlp() -> Iterator[GrpcOtlpReceiver]:
    receiver = GrpcOtlpReceiver().start()
    yield receiver
    receiver.stop()


def bridge_config(endpoint: str | None, **overrides: Any) -> cfg.Config:
    raw: dict[str, Any] = {
        "receiver": {"listen": "127.0.0.1:0"},
        "http": {"listen": "127.0.0.1:0"},
        "analyzers": [],
        "metrics": {"export_interval": "0.5s"},
        "exporters": {"otlp": {"endpoint": endpoint or "127.0.0.1:1", "enabled": endpoint is not None}},
        "shutdown_timeout": "2s",
    }
    for key, value in overrides.items():
        raw[key] = value
    return cfg.parse(raw, {})


@pytest.fixture
async def make_bridge(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    started: list[Bridge] = []
    if "otlp" in request.fixturenames:
        # Set up first so it is torn down last: a bridge flushes into it as it stops (a receiver
        # gone first would have each stop wait out its shutdown_timeout retrying).
        request.getfixturevalue("otlp")

    async def make(config: cfg.Config, **kwargs: Any) -> Bridge:
        """A started bridge; its clock is the synthetic entries' unless ``clock`` says otherwise."""
        kwargs.setdefault("clock", als.synthetic_clock)
        bridge = Bridge(config, **kwargs)
        await bridge.start()
        started.append(bridge)
        return bridge

    yield make
    for bridge in started:
        await bridge.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: Any) -> dict[str, certs.Issued]:
    """The bridge's CA with a server and a client certificate, and another CA's client certificate."""
    return certs.mesh_pki(tmp_path_factory.mktemp("pki"))
