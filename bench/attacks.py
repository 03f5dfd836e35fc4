"""Peak resident memory of ``als2otel serve`` under the memory attacks a sender can try.

Each attack runs against a fresh ``als2otel serve`` process (so its peak, VmHWM, is that
attack's), configured as a user would (mx-mesh, no exporter reachable), with mutual TLS on
the ALS port for the handshake flood. Reported: resident memory once ready, the peak
during the attack, resident memory after it, and what the bridge answered.

* otlp-grpc-4MB x8: eight concurrent OTLP/gRPC requests of 2 million empty records each
  (4 MB, just under the 4 MiB bound; parsed whole, each once cost ~72 times its bytes);
* otlp-grpc-30MB: one request of 16 million empty records (30 MiB, past the bound);
* otlp-http-held x32: 32 OTLP/HTTP uploads of 4 MiB declared, 3.9 MiB sent, then held;
* tls-silent x2300: 2,300 TCP connections to the TLS port that never send a byte.

Usage: python bench/attacks.py [--attacks otlp-grpc-4MB,otlp-grpc-30MB,otlp-http-held,tls-silent]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from support import certs  # noqa: E402
from support.net import free_port, wait_ready  # noqa: E402
from support.otlp_logs import LOGS_METHOD  # noqa: E402

from als2otel.translation.wire import varint  # noqa: E402


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak so far) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def empty_records(count: int) -> bytes:
    """An ExportLogsServiceRequest of ``count`` empty records in one scope of one resource."""
    scope = b"\x12\x00" * count
    resource_logs = b"\x12" + varint(len(scope)) + scope
    return b"\x0a" + varint(len(resource_logs)) + resource_logs


def start_bridge(directory: Path, tls: bool) -> tuple[subprocess.Popen[bytes], int, int]:
    als_port, http_port = free_port(), free_port()
    receiver: dict[str, object] = {"listen": f"127.0.0.1:{als_port}"}
    if tls:
        pki = certs.mesh_pki(directory)
        receiver = {**certs.mtls_receiver(pki, directory), "listen": f"127.0.0.1:{als_port}"}
    config = {
        "receiver": receiver,
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": ["mx-mesh"],
        "exporters": {"otlp": {"enabled": False}},
        "log_level": "error",
    }
    path = directory / "bridge.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", str(path)])
    if not wait_ready(http_port, timeout=60):
        process.kill()
        raise RuntimeError("the bridge did not become ready")
    return process, als_port, http_port


async def otlp_grpc(port: int, payload: bytes, concurrent: int) -> str:
    import grpc

    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(
            LOGS_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

        async def one() -> str:
            try:
                await call(payload, timeout=120)
                return "OK"
            except grpc.aio.AioRpcError as error:
                return error.code().name

        answers = await asyncio.gather(*(one() for _ in range(concurrent)))
    return ", ".join(sorted({f"{answers.count(a)} {a}" for a in answers}))


def held_uploads(port: int, count: int) -> str:
    declared = 4 * 1024 * 1024
    sent = declared - 100 * 1024
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
        )
        sockets.append(sock)
    chunk = b"\x00" * (64 * 1024)
    for sock in sockets:
        sock.settimeout(2)
        try:
            for _ in range(sent // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # answered (503) and closed
    time.sleep(2)
    answers: dict[str, int] = {}
    for sock in sockets:
        sock.settimeout(0.5)
        try:
            head = sock.recv(64).split(b"\r\n", 1)[0].decode() or "closed"
        except OSError:
            head = "held"
        answers[head] = answers.get(head, 0) + 1
        sock.close()
    return ", ".join(f"{n} {head}" for head, n in sorted(answers.items()))


def silent_connections(port: int, count: int) -> str:
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(3)
    for sock in sockets:
        sock.close()
    return f"{len(sockets)} connections held 3 s"


ATTACKS = {
    "otlp-grpc-4MB": lambda als, http: asyncio.run(otlp_grpc(als, empty_records(2_000_000), 8)),
    "otlp-grpc-30MB": lambda als, http: asyncio.run(otlp_grpc(als, empty_records(16_000_000), 1)),
    "otlp-http-held": lambda als, http: held_uploads(http, 32),
    "tls-silent": lambda als, http: silent_connections(als, 2300),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    args = parser.parse_args()
    print(f"{'attack':16} {'ready MiB':>10} {'peak MiB':>9} {'after MiB':>10}  answered")
    for name in args.attacks.split(","):
        with tempfile.TemporaryDirectory() as directory:
            process, als_port, http_port = start_bridge(Path(directory), tls=name == "tls-silent")
            try:
                ready = memory_kib(process.pid)["VmRSS"]
                answered = ATTACKS[name](als_port, http_port)
                time.sleep(1)
                after = memory_kib(process.pid)
                peak, rss = after["VmHWM"] / 1024, after["VmRSS"] / 1024
                print(f"{name:16} {ready / 1024:10.0f} {peak:9.0f} {rss:10.0f}  {answered}", flush=True)
            finally:
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
