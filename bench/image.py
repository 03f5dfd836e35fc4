"""The container image: built from the Dockerfile with buildah, run with podman as deploy/'s
Deployment runs it, and measured: its size, the time from `run` to /readyz, and to exit on SIGTERM.

As the manifest runs it: user 10001:10001, read-only root filesystem, every capability
dropped, no privilege escalation, config/als2otel.yaml mounted read-only at /etc/als2otel,
POD_NAME set. The host's network (ports 11800 and 9464 must be free); an OTLP receiver
on localhost:4317, the sample config's backend, so the final flush at SIGTERM has somewhere to go.

Needs root, and Debian's buildah, podman and runc (``apt-get install buildah podman runc``).
``--base`` picks the image the Dockerfile builds on (python:3.11-slim by default); with
``--debian-base`` a Debian 12 image with its python3 is made here first with debootstrap, for
machines that reach Debian's packages but no container registry. ``--pip-cert`` mounts a CA
bundle for pip into the build, where a proxy re-signs TLS.

Podman's default ulimits (1,048,576 open files) cannot be raised where the machine is itself a
sandbox; the containers here inherit the caller's (a containers.conf of our own, unless
CONTAINERS_CONF names one). Where crun cannot run without cgroups v2, ``--runtime runc``.

Usage: python bench/image.py [--base IMAGE | --debian-base] [--pip-cert FILE] [--runtime runc]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.net import wait_ready  # noqa: E402

TAG = "localhost/als2otel:bench"
DEBIAN_BASE = "localhost/debian-python:3.11-bookworm"


def run(*command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def debian_base() -> str:
    """Debian 12 (minbase) with python3 and its venv module, as a local image."""
    with tempfile.TemporaryDirectory() as rootfs:
        run(
            "debootstrap", "--variant=minbase", "--include=python3,python3-venv",
            "bookworm", rootfs, "http://deb.debian.org/debian",
        )  # fmt: skip
        run("sh", "-c", f"rm -rf {rootfs}/var/cache/apt/archives/*.deb {rootfs}/var/lib/apt/lists/*")
        container = run("buildah", "from", "scratch").stdout.strip()
        try:
            mount = run("buildah", "mount", container).stdout.strip()
            run("cp", "-a", f"{rootfs}/.", mount)
            run("buildah", "umount", container)
            run("buildah", "config", "--cmd", "python3", container)
            run("buildah", "commit", "-q", container, DEBIAN_BASE)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return DEBIAN_BASE


def build(base: str, pip_cert: str | None) -> float:
    command = ["buildah", "bud", "-q", "--build-arg", f"BASE={base}", "-t", TAG]
    if pip_cert:
        command += ["--build-arg", f"PIP_CERT={pip_cert}", "--volume", f"{pip_cert}:{pip_cert}:ro"]
    started = time.monotonic()
    run(*command, str(ROOT), env={**os.environ, "BUILDAH_ISOLATION": "chroot"})
    return time.monotonic() - started


def run_as_the_manifest(podman: list[str]) -> dict[str, object]:
    from support.otlp_receiver import GrpcOtlpReceiver

    backend = GrpcOtlpReceiver(port=4317).start()
    try:
        return _run(podman)
    finally:
        backend.stop()


def _run(podman: list[str]) -> dict[str, object]:
    name = "als2otel-bench"
    subprocess.run([*podman, "rm", "-f", name], capture_output=True, check=False)
    started = time.monotonic()
    run(
        *podman, "run", "-d", "--name", name, "--network", "host",
        "--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--stop-timeout", "30",
        "--volume", f"{ROOT / 'config'}:/etc/als2otel:ro", "--env", "POD_NAME=als2otel-bench-0",
        TAG, "serve", "--config", "/etc/als2otel/als2otel.yaml",
    )  # fmt: skip
    try:
        if not wait_ready(9464, 60, interval=0.02):
            raise RuntimeError(run(*podman, "logs", name).stderr[-2000:])
        start_up = time.monotonic() - started
        user = run(*podman, "exec", name, "id", "-u").stdout.strip()
        write = subprocess.run(
            [*podman, "exec", name, "touch", "/x"], check=False, capture_output=True, text=True
        )
        stopping = time.monotonic()
        run(*podman, "stop", name)
        stop = time.monotonic() - stopping
        code = run(*podman, "inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        return {
            "seconds_to_ready": round(start_up, 2),
            "seconds_to_exit_on_sigterm": round(stop, 2),
            "exit_code": int(code),
            "uid": int(user),
            "root_filesystem_writable": write.returncode == 0,
        }
    finally:
        subprocess.run([*podman, "rm", "-f", name], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="python:3.11-slim")
    parser.add_argument("--debian-base", action="store_true", help="make a Debian 12 base here")
    parser.add_argument("--pip-cert", default=os.environ.get("PIP_CERT"))
    parser.add_argument("--runtime", default="", help="podman's OCI runtime (e.g. runc)")
    args = parser.parse_args()
    if "CONTAINERS_CONF" not in os.environ:
        conf = Path(tempfile.mkdtemp()) / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        os.environ["CONTAINERS_CONF"] = str(conf)
    base = debian_base() if args.debian_base else args.base
    seconds = build(base, args.pip_cert)
    images = json.loads(run("podman", "images", "--format", "json", TAG).stdout)
    size = images[0]["Size"]
    podman = ["podman", *(["--runtime", args.runtime] if args.runtime else [])]
    result = {"base": base, "build_seconds": round(seconds, 1), "image_mb": round(size / 1e6, 1)}
    result |= run_as_the_manifest(podman)
    print(json.dumps(result, indent=1))
    if result["uid"] != 10001 or result["root_filesystem_writable"] or result["exit_code"] != 0:
        sys.exit("the image does not run as the manifest runs it")


if __name__ == "__main__":
    main()
