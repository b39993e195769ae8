"""Certificates for the TLS tests, made with the ``openssl`` command (EC P-256: fast to make).

``make_pki(folder)`` writes a test CA, a node certificate (CN and subjectAltName localhost /
127.0.0.1, server and client use), a client certificate from the same CA, a client certificate
from a rogue CA, an expired certificate and a key that belongs to no certificate.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Pair
    node: Pair  # the node (and a storescp destination): localhost / 127.0.0.1
    client: Pair  # a peer signed by the same CA
    rogue_ca: Pair
    rogue_client: Pair  # a peer signed by another CA
    expired: Pair  # signed by the CA, validity ended yesterday
    stray_key: Path  # a key that belongs to no certificate


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.fail("openssl not installed (Debian package openssl)")
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _ca(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl("req", "-x509", *EC, "-keyout", pair.key.name, "-out", pair.cert.name, "-days", "3",
             "-subj", f"/CN={name}", cwd=folder)
    return pair


def _leaf(folder: Path, name: str, ca: Pair, cn: str, *, days: int = 3) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
    )
    _openssl("req", *EC, "-keyout", pair.key.name, "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca.cert.name, "-CAkey", ca.key.name,
             "-CAcreateserial", "-out", pair.cert.name, "-days", str(days), "-extfile", ext.name, cwd=folder)
    return pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    rogue_ca = _ca(folder, "rogue-ca")
    stray = folder / "stray.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", stray.name,
             cwd=folder)
    return Pki(
        ca=ca,
        node=_leaf(folder, "node", ca, "localhost"),
        client=_leaf(folder, "client", ca, "TESTSCU"),
        rogue_ca=rogue_ca,
        rogue_client=_leaf(folder, "rogue-client", rogue_ca, "TESTSCU"),
        expired=_leaf(folder, "expired", ca, "localhost", days=-1),
        stray_key=stray,
    )
