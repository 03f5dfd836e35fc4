"""Test certificates made with openssl: CAs, and server and client certificates they sign."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Issued:
    cert: Path
    key: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ca(directory: Path, name: str) -> Issued:
    """A self-signed CA."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return Issued(cert, key)


def issue(directory: Path, name: str, by: Issued, san: str, client: bool = False) -> Issued:
    """A certificate for ``san`` (``DNS:localhost,IP:127.0.0.1`` or ``URI:spiffe://...``) signed by ``by``."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(by.cert), "-CAkey", str(by.key), "-CAcreateserial",
        "-days", "2", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return Issued(cert, key)


SPIFFE = "URI:spiffe://cluster.local/ns/default/sa/productpage"


def mesh_pki(directory: Path) -> dict[str, Issued]:
    """The bridge's CA with a server and a client certificate, and another CA's client certificate."""
    mesh, other = ca(directory, "mesh-ca"), ca(directory, "other-ca")
    return {
        "ca": mesh,
        "server": issue(directory, "server", mesh, "DNS:localhost,IP:127.0.0.1"),
        "server2": issue(directory, "server2", mesh, "DNS:localhost,IP:127.0.0.1"),
        "client": issue(directory, "client", mesh, SPIFFE, client=True),
        "stranger": issue(directory, "stranger", other, SPIFFE, client=True),
    }


def mtls_receiver(pki: dict[str, Issued], directory: Path) -> dict[str, Any]:
    """receiver.tls with copies of the server's files (so a test may rotate them)."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    return {
        "listen": "127.0.0.1:0",
        "tls": {"cert_file": str(cert), "key_file": str(key), "client_ca_file": str(pki["ca"].cert)},
    }
