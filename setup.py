"""The per-entry path compiled, where a C compiler is at hand.

pyproject.toml holds everything else about the package. ``pip install .`` compiles the
modules in :data:`COMPILED` (the work done for every access-log entry: decoding, analysis,
spans and metric points) with mypyc into extension modules next to their sources, which
Python then imports instead, and builds the C sources of :data:`NATIVE_SOURCES` (the entry
reader), each of which its Python twin stands in for where it is missing (docs/performance.md).
Where no compiler works the build warns and installs the pure-Python modules, which
behave the same, byte for byte. ``ALS2OTEL_NO_EXTENSIONS=1`` skips compiling: the development venv is
installed that way, since an editable install would keep running the compiled copy of a
module after its source changed (``make test`` tests both builds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "src/als2otel/model.py",
    "src/als2otel/pipeline.py",
    "src/als2otel/protowire.py",
    "src/als2otel/receiver/otlp_wire.py",
    "src/als2otel/receiver/normalize.py",
    "src/als2otel/analysis/chain.py",
    "src/als2otel/analysis/proxy.py",
    "src/als2otel/analysis/k8s_mesh.py",
    "src/als2otel/analysis/k8s/index.py",
    "src/als2otel/analysis/mx_mesh.py",
    "src/als2otel/analysis/peers.py",
    "src/als2otel/istio.py",
    "src/als2otel/translation/ids.py",
    "src/als2otel/translation/metric_sets.py",
    "src/als2otel/translation/metrics.py",
    "src/als2otel/translation/semconv.py",
    "src/als2otel/translation/shapes.py",
    "src/als2otel/translation/spans.py",
    "src/als2otel/translation/translator.py",
    "src/als2otel/translation/wire.py",
]
"""The modules compiled, as mypy files; everything they import stays Python."""

MYPY_ARGS = ["--config-file=", "--no-site-packages", "--ignore-missing-imports"]
"""The same types wherever it builds: third-party modules (protobuf, OpenTelemetry) are Any,
whether or not they are installed in the build environment."""


class OptionalBuildExt(build_ext):
    """Builds the compiled modules, or, when that fails, none of them, with a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # a missing or failing compiler: pure Python instead
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            _not_compiled(error)


NATIVE_SOURCES = ["src/als2otel/receiver/_entries.c", "src/als2otel/translation/_spans.c"]
"""The per-entry work written in C, each beside its Python twins (the entry and record readers:
normalize.py and otlp_logs.py; trace context, span ids and span encoding: ids.py and wire.py)."""

NATIVE = [
    Extension(
        path.removeprefix("src/").removesuffix(".c").replace("/", "."),
        [path],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"],
    )
    for path in NATIVE_SOURCES
]


def extensions() -> list[Any]:
    """The compiled modules' extensions and the C ones; none when asked not to; only the C ones
    when mypyc is missing (a build without isolation) or refuses the code."""
    if os.environ.get("ALS2OTEL_NO_EXTENSIONS"):
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, needed only here)

        return [*mypycify([*MYPY_ARGS, *COMPILED], group_name="als2otel"), *NATIVE]
    except (Exception, SystemExit) as error:  # ImportError included
        _not_compiled(error)
        return list(NATIVE)


def _not_compiled(error: BaseException) -> None:
    print(
        f"WARNING: als2otel's per-entry modules were not compiled ({error!r}); "
        "installing them as pure Python, which is slower per core",
        file=sys.stderr,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
