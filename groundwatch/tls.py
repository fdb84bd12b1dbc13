"""Certificates for the embedded server's TLS: a private CA, a server certificate, client ones.

`groundwatch up --tls` calls :func:`ensure` to create them under ``<data_dir>/tls/`` once and
reuse them afterwards. Clients verify the server against the CA and its host name (the server
certificate names ``localhost``, ``127.0.0.1`` and ``::1``, where the embedded server listens).
Private keys are written with mode 0600. Rotation: delete the folder (or run
``groundwatch up --tls --new-certs``) and restart; clients must then use the new CA file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from groundwatch.errors import ConfigError

if TYPE_CHECKING:  # cryptography is imported only when certificates are made (`--help` stays fast)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity current TLS clients accept for a leaf certificate


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS set-up; client_cert/client_key only for mutual TLS."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_cert is not None


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "TLS certificates need the `cryptography` package: `.venv/bin/pip install cryptography` "
            "(or `make setup`), or pass your own with GROUNDWATCH_TLS_CA_CERT/_CERT/_KEY"
        ) from e


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"{folder / 'ca.key'} is not the EC key groundwatch made; delete {folder} to start over"
        )
    return cert, key


def make_ca(folder: Path, common_name: str = "groundwatch local CA") -> Path:
    """A self-signed CA (EC P-256) in folder/ca.crt and folder/ca.key; returns the certificate path."""
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(folder / "ca.key", _key_pem(key), private=True)
    _write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
    return folder / "ca.crt"


def make_leaf(
    folder: Path, stem: str, common_name: str, *, hosts: tuple[str, ...] = (), client: bool = False
) -> tuple[Path, Path]:
    """A certificate signed by folder's CA: a server one for `hosts`, or a client one."""
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = _load_ca(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.crt"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def ensure(folder: Path, *, mutual: bool = False, renew: bool = False) -> TlsFiles:
    """The CA, server certificate and (mutual) client certificate under `folder`, made if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if renew or not (folder / "ca.crt").exists() or not (folder / "ca.key").exists():
        for stale in ("server", "client"):
            for ext in ("crt", "key"):
                (folder / f"{stale}.{ext}").unlink(missing_ok=True)
        make_ca(folder)
    if not (folder / "server.crt").exists():
        make_leaf(folder, "server", "groundwatch server", hosts=SERVER_HOSTS)
    if mutual and not (folder / "client.crt").exists():
        make_leaf(folder, "client", "groundwatch client", client=True)
    return TlsFiles(
        ca_cert=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt" if mutual else None,
        client_key=folder / "client.key" if mutual else None,
    )
