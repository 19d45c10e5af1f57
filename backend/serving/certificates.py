"""The backend's self-signed TLS certificate: made once (``serve --tls`` on first use, ``install.py --tls``,
``python -m backend tls make``), stored in the LatentForge home, pinned by clients through its SHA-256 fingerprint.

- Key: EC P-256 (NIST SECG ``secp256r1``), PEM, unencrypted, file mode 0600. Certificate: X.509 v3, self-signed
  with ECDSA-SHA256, valid :data:`VALID_DAYS` days, subject CN ``LatentForge backend``, subjectAltName = the host
  names and IP addresses given (clients pin the fingerprint and do not check names; the names help other tools).
- Making one needs the ``cryptography`` package (installed by install.py with the backend's packages); reading the
  fingerprint of an existing certificate needs only the standard library.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from blender_addon.core import tls

VALID_DAYS = 3650
"""Validity of a made certificate (clients pin the fingerprint, so expiry is not checked by them)."""


class CertificateError(ValueError):
    """A certificate that cannot be made or read (the message says what to do)."""


def default_hosts(bind_host: str | None = None, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """subjectAltName entries: ``extra`` (``--tls-host``), the bind address when it is a specific one, this machine's
    host name, ``localhost`` and ``127.0.0.1`` — each once, in that order."""
    names = list(extra)
    if bind_host and bind_host not in ("0.0.0.0", "::", ""):
        names.append(bind_host)
    names += [socket.gethostname(), "localhost", "127.0.0.1"]
    seen: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return seen


def make_certificate(cert_file: Path, key_file: Path, hosts: list[str]) -> str:
    """Write a new key (mode 0600) and self-signed certificate for ``hosts``; return its fingerprint
    (:func:`blender_addon.core.tls.fingerprint`).

    Raises:
        CertificateError: the ``cryptography`` package is missing, or no host was given.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise CertificateError("making a TLS certificate needs the `cryptography` package: run `python -m pip "
                               "install cryptography` in the backend's environment (install.py installs it), or "
                               "give your own with --cert FILE --key FILE") from None
    if not hosts:
        raise CertificateError("a TLS certificate needs at least one host name or IP address (--tls-host)")
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LatentForge backend")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_file, cert_file = Path(key_file), Path(cert_file)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_file, 0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return tls.fingerprint(cert.public_bytes(serialization.Encoding.DER))


def certificate_fingerprint(cert_file: Path) -> str:
    """The SHA-256 fingerprint of the first certificate of a PEM file (stdlib only).

    Raises:
        CertificateError: the file is missing or holds no PEM certificate.
    """
    cert_file = Path(cert_file)
    try:
        text = cert_file.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise CertificateError(f"no TLS certificate at {cert_file}: `python -m backend tls make` (or `serve --tls`) "
                               f"makes one") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise CertificateError(f"{cert_file} holds no PEM certificate")
    pem = text[text.index(begin):text.index(end) + len(end)] + "\n"
    try:
        return tls.fingerprint(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError as err:
        raise CertificateError(f"{cert_file} holds no readable PEM certificate ({err})") from None


def ensure_certificate(cert_file: Path, key_file: Path, hosts: list[str]) -> tuple[str, bool]:
    """``(fingerprint, made)``: the fingerprint of the certificate at ``cert_file``, making one (and its key) first
    when neither file exists. Raises CertificateError when only one of the two exists, or as
    :func:`make_certificate`."""
    cert_file, key_file = Path(cert_file), Path(key_file)
    if cert_file.exists() and key_file.exists():
        return certificate_fingerprint(cert_file), False
    if cert_file.exists() or key_file.exists():
        present, missing = (cert_file, key_file) if cert_file.exists() else (key_file, cert_file)
        raise CertificateError(f"{present} exists but {missing} does not; restore it, or delete {present} to make "
                               f"a new certificate (clients then need its new fingerprint)")
    return make_certificate(cert_file, key_file, hosts), True
