"""Keys, certificates and passwords for the local services of a secured profile (conf/secure.yaml).

`streamrec services certs` (and `make certs`) makes them once with `openssl` into `secrets_dir` (git-ignored):

    ca.pem, ca.key              a self-signed CA (the only certificate clients trust in the secure profile)
    server.pem, server.key      the services' certificate, signed by the CA, for 127.0.0.1 and localhost
    server.p12                  the same key and chain as a PKCS#12 keystore (Kafka's and Cassandra's listeners)
    keystore.password           its password
    kafka-admin.password        the broker's own SASL user (inter-broker traffic)
    kafka-client.password       the SASL user every streamrec client logs in as (conf/secure.yaml kafka.security)
    cassandra-admin.password    the superuser role that replaces Cassandra's default cassandra/cassandra
    cassandra-client.password   the login role every streamrec client uses (conf/secure.yaml cassandra.security)

Passwords are random (32 URL-safe characters) with no trailing newline: Kafka's DirectoryConfigProvider, through
which the job's Java clients read the file, takes a file's whole content. Every file is readable by its owner only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

from streamrec.services.proc import ServiceError

PASSWORDS = ("keystore", "kafka-admin", "kafka-client", "cassandra-admin", "cassandra-client")
CERT_DAYS = 825  # what browsers and most TLS stacks accept for a leaf certificate


def password_file(secrets_dir: Path, name: str) -> Path:
    return secrets_dir / f"{name}.password"


def read_password(secrets_dir: Path, name: str) -> str:
    path = password_file(secrets_dir, name)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ServiceError(f"no {path}: make the local secrets with `streamrec services certs` (make certs)") from None


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure(secrets_dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> list[str]:
    """Make whatever of the local secrets is missing (idempotent); returns the names of the files made. A new CA
    invalidates the old server certificate, so both are made again together."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    made: list[str] = []
    for name in PASSWORDS:
        path = password_file(secrets_dir, name)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24))
            made.append(path.name)
    d = secrets_dir
    if not (d / "ca.pem").exists() or not (d / "ca.key").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                 "-days", str(CERT_DAYS), "-subj", "/CN=streamrec local CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        made += ["ca.pem", "ca.key"]
        (d / "server.pem").unlink(missing_ok=True)
    if not (d / "server.pem").exists() or not (d / "server.key").exists():
        san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
        with tempfile.NamedTemporaryFile("w", dir=d, suffix=".ext", delete=False) as ext:
            ext.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
                      "keyUsage=critical,digitalSignature,keyEncipherment\n")
        try:
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                     "-subj", f"/CN={hosts[0]}", cwd=d)
            _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                     "-out", "server.pem", "-days", str(CERT_DAYS), "-sha256", "-extfile", ext.name, cwd=d)
        finally:
            Path(ext.name).unlink(missing_ok=True)
            (d / "server.csr").unlink(missing_ok=True)
        made += ["server.pem", "server.key"]
        (d / "server.p12").unlink(missing_ok=True)
    if not (d / "server.p12").exists():
        _openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
                 "-name", "server", "-out", "server.p12",
                 "-passout", f"file:{password_file(d, 'keystore')}", cwd=d)
        made.append("server.p12")
    for p in d.iterdir():
        os.chmod(p, 0o600)
    return made
