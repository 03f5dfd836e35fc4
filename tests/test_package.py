"""The container image's steps, checked without a container engine.

The Dockerfile builds a wheel from exactly what it copies, installs it, and
runs ``als2otel`` as a non-root user. Here the same wheel is built from the
same files, and the bridge is run from the wheel's contents alone: a module,
data file or entry point missing from the package fails here, not in an image;
so does a build that did not compile the modules setup.py compiles (this machine,
as the image's build stage, has a C compiler).
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from conftest import compiled_modules

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")  # continuation lines joined
    lines = text.splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_copies_what_exists_runs_the_entry_point_as_non_root() -> None:
    steps = dockerfile_instructions()
    copied = [
        arg for op, arg in steps if op == "COPY" and not arg.startswith("--from")
    ]  # the build context's files
    for arg in copied:
        *sources, _ = shlex.split(arg)
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the project"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("0", "root"), "the image must run as a non-root user"
    entry = [json.loads(arg) for op, arg in steps if op == "ENTRYPOINT"]
    assert entry == [["als2otel"]]
    command = [json.loads(arg) for op, arg in steps if op == "CMD"][-1]
    config_in_image = command[command.index("--config") + 1]
    assert any(arg.split()[-1] == config_in_image for arg in copied), "CMD names a config the image lacks"


def build_wheel(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A wheel in ``tmp_path/wheels`` built from what the Dockerfile's build stage copies, and
    nothing else."""
    context = tmp_path / "context"
    context.mkdir()
    steps = dockerfile_instructions()
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    build_stage = steps[stages[0] : stages[1]]
    for op, arg in build_stage:  # what the build stage copies, and nothing else
        if op == "COPY":
            *sources, _ = shlex.split(arg)
            for source in sources:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")
                    shutil.copytree(ROOT / source, context / source, ignore=ignore)
                else:
                    shutil.copy(ROOT / source, context / source)
    wheels = tmp_path / "wheels"
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", str(wheels), str(context)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_a_build_without_a_compiler_installs_the_pure_python_modules(tmp_path: Path) -> None:
    """Where no C compiler works the build warns and the wheel holds the Python twins alone, which
    read entries (the entry reader's Python path) and run."""
    build = build_wheel(tmp_path, {"CC": "false", "LDSHARED": "false"})
    assert "installing them as pure Python" in build.stderr + build.stdout
    (wheel,) = (tmp_path / "wheels").glob("als2otel-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        assert not [n for n in archive.namelist() if n.endswith(".so")]
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from support import mesh\n"
        "from als2otel.receiver import normalize\n"
        f"assert normalize.__file__.startswith({str(site)!r}) and normalize.native is None\n"
        "encoded = mesh.outbound(1).SerializeToString()\n"
        "now = 1_760_000_000 * 10**9\n"
        "entry = normalize.decode_entry(encoded, 'http', 'v3', now, normalize.AddressCache())\n"
        "assert entry.path == '/reviews/1', entry\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr


def test_wheel_built_from_the_dockerfiles_files_runs_from_its_own_contents(tmp_path: Path) -> None:
    build_wheel(tmp_path)
    wheels = tmp_path / "wheels"
    (wheel,) = wheels.glob("als2otel-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        names = archive.namelist()
    for module in compiled_modules():
        stem = module.replace(".", "/")
        assert any(n.startswith(f"{stem}.cpython-") and n.endswith(".so") for n in names), (
            f"{module} not compiled"
        )
    entry_points = configparser.ConfigParser()
    entry_points.read(next(site.glob("als2otel-*.dist-info")) / "entry_points.txt")
    module, _, function = entry_points["console_scripts"]["als2otel"].partition(":")

    def als2otel(*args: str) -> subprocess.CompletedProcess[str]:
        code = (
            "import sys, als2otel\n"
            f"assert als2otel.__file__.startswith({str(site)!r}), als2otel.__file__\n"
            "import als2otel.web.server, als2otel.receiver._proto.als_pb2\n"  # data file, generated code
            "import als2otel.translation.wire as wire\n"
            "assert wire.__file__.endswith('.so'), wire.__file__\n"  # the compiled build runs
            f"from {module} import {function} as main\n"
            f"sys.exit(main({list(args)!r}))\n"
        )
        # The wheel's files first: ahead of the editable install this checkout runs from.
        env = {**os.environ, "PYTHONPATH": str(site)}
        return subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=tmp_path,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    version = als2otel("--version")
    assert version.returncode == 0, version.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version.stdout.split() == ["als2otel", project["version"]]
    checked = als2otel("check-config", str(ROOT / "config" / "als2otel.yaml"))
    assert checked.returncode == 0, checked.stderr
