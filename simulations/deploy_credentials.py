"""Per-deployment secrets of ``fedrec deploy-local``: TLS, SuperNode keys, SuperExec secret.

One call of :func:`create_credentials` writes, into a new folder of mode 0700, every file
open-source Flower 1.42 can use to lock a deployment down (docs/SECURITY.md, "Deployment"):

- a certificate authority made for this deployment only (``ca.pem``; its key never
  leaves memory) and a server certificate it signed for ``127.0.0.1``, ``::1`` and
  ``localhost`` (``server.pem``, ``server.key``): TLS on the SuperLink's Fleet, Control
  and Runtime APIs and on every SuperNode's Runtime API;
- one EC key pair on NIST P-384 per SuperNode (``node-<i>.key`` in OpenSSH format, read
  by ``flower-supernode --auth-supernode-private-key``; ``node-<i>.pub``, registered with
  the SuperLink by ``flwr supernode register``): SuperNode authentication;
- ``superexec.secret``, 32 random bytes shared by the SuperLink, the SuperNodes and the
  SuperExecs (``--superexec-auth-secret-file``): only a holder may take a task (start a
  ServerApp or ClientApp) from a Runtime API.

Every file is 0600. The folder lives in the deployment's temporary folder and is removed
with it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FOLDER_MODE = 0o700
FILE_MODE = 0o600
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")
VALID_FOR = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Credentials:
    """Paths of one deployment's credentials (all inside ``folder``)."""

    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    superexec_secret: Path
    node_keys: tuple[Path, ...]

    def node_public_key(self, node: int) -> Path:
        """The OpenSSH public key of SuperNode ``node`` (``flwr supernode register``)."""
        return self.node_keys[node].with_suffix(".pub")


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file of mode 0600 (never through an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, FILE_MODE)  # whatever the umask
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificates() -> tuple[bytes, bytes, bytes]:
    """``(CA certificate, server certificate, server key)``, PEM, for loopback only."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name(f"fedrec deploy-local CA {secrets.token_hex(4)}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), server.public_bytes(pem), _pem_key(server_key)


def node_key_pair() -> tuple[bytes, bytes]:
    """A SuperNode key pair on P-384: ``(OpenSSH private key, OpenSSH public key)``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def create_credentials(folder: Path, n_nodes: int) -> Credentials:
    """Create ``folder`` (0700, must not exist) with fresh credentials for ``n_nodes``."""
    folder.mkdir(mode=FOLDER_MODE)
    os.chmod(folder, FOLDER_MODE)
    ca, server, server_key = _certificates()
    keys = []
    for i in range(n_nodes):
        private, public = node_key_pair()
        keys.append(_write_private(folder / f"node-{i}.key", private))
        _write_private(folder / f"node-{i}.pub", public)
    return Credentials(
        folder=folder,
        ca_cert=_write_private(folder / "ca.pem", ca),
        server_cert=_write_private(folder / "server.pem", server),
        server_key=_write_private(folder / "server.key", server_key),
        superexec_secret=_write_private(folder / "superexec.secret", secrets.token_bytes(32)),
        node_keys=tuple(keys),
    )


__all__ = ["Credentials", "create_credentials", "node_key_pair"]
