"""A certificate authority of the stack's own and the certificates it signs (SeaweedFS's mutual TLS). Keys are written 0600 (private.py)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from team_stack.private import write_private

VALID = datetime.timedelta(days=3650)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key, issuer: str, issuer_key, extensions: list) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _server_extensions(hosts: list[str]) -> list:
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return [(x509.SubjectAlternativeName(names), False), (x509.ExtendedKeyUsage(usages), False)]


def make_authority(folder: Path, name: str, hosts: list[str]) -> dict[str, Path]:
    """A CA (ca.crt; its key is not kept: nothing more is ever signed) and one certificate for ``hosts``, used
    both to serve and to call (node.crt, node.key). Made once: an existing set is kept."""
    paths = {"ca": folder / "ca.crt", "cert": folder / "node.crt", "key": folder / "node.key"}
    if all(path.exists() for path in paths.values()):
        return paths
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)  # sign certificates
    ca = _certificate(
        f"{name} CA",
        ca_key,
        f"{name} CA",
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (ca_usage, True)],
    )
    node = _certificate(name, node_key, f"{name} CA", ca_key, _server_extensions(hosts))
    write_private(paths["key"], _pem_key(node_key))
    paths["cert"].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
