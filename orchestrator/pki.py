"""A cluster's own certificate authority for `orchestrate up --tls` (the `cryptography` package).

`<state>/tls/` holds ca.crt/ca.key, one certificate per node (node.<name>.crt/.key: serverAuth for
its client and peer ports, clientAuth for dialing its peers, a SAN for every address the node
serves, and its peer URL as a URI SAN, which members check a connection's claimed member against)
and client.crt/.key, the orchestrator's own client certificate (chaos, experiments and the
dashboard use it too). Its common name ADMIN_CN is what nodes accept as the Admin credential
(--admin-cert-cn); no node may carry it. Keys are written mode 0600. A node's certificate is reused
while it covers every address asked for, and issued again (same name) when one is missing.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 825
CLIENT_NAME = "client"  # client.crt: the orchestrator's
ADMIN_CN = "quorumlab-orchestrator"  # client.crt's common name: nodes take it as the Admin credential
# what a lab node always serves on besides its own address
LOOPBACK = ("127.0.0.1", "localhost")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with the mode from the start (a key is never readable by others, not even briefly)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "quorumlab"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _san(addresses: Iterable[str], uris: Iterable[str] = ()) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in dict.fromkeys(uris)]
    for a in dict.fromkeys(addresses):  # once each, in order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            names.append(x509.DNSName(a))
    return x509.SubjectAlternativeName(names)


def _covers(cert_file: Path, addresses: Iterable[str], uris: Iterable[str] = ()) -> bool:
    """Whether the certificate's SANs name every address and URI (a node moved needs a new one)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    have |= set(san.get_values_for_type(x509.UniformResourceIdentifier))
    return all(str(_ip_or_name(a)) in have for a in addresses) and all(u in have for u in uris)


def _ip_or_name(a: str) -> str:
    try:
        return str(ipaddress.ip_address(a))
    except ValueError:
        return a


class ClusterPKI:
    """The files of one cluster's CA in `dir` (created on first use)."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca_cert = dir / "ca.crt"
        self.ca_key = dir / "ca.key"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def exists(self) -> bool:
        return self.ca_cert.exists()

    def files(self) -> list[Path]:
        """What we make here (for a purge): *.crt and *.key directly in dir."""
        if not self.dir.is_dir() or self.dir.is_symlink():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_file() and p.suffix in (".crt", ".key"))

    def ensure_ca(self) -> None:
        if self.ca_cert.exists() and self.ca_key.exists():
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name(f"quorumlab CA {self.dir.parent.name}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(self.ca_key, _key_pem(key), 0o600)
        _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _issue(
        self,
        name: str,
        cn: str,
        addresses: Iterable[str],
        usages: list[x509.ObjectIdentifier],
        uris: Iterable[str] = (),
    ) -> None:
        self.ensure_ca()
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "our CA key is always EC"
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        addrs, urls = list(addresses), list(uris)
        if addrs or urls:
            b = b.add_extension(_san(addrs, urls), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        _write(self.key(name), _key_pem(key), 0o600)
        _write(self.cert(name), cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def ensure_server(self, node: str, addresses: Iterable[str], peer_urls: Iterable[str] = ()) -> tuple[Path, Path]:
        """The node's (cert, key) as node.<name>.crt/.key (a node name has no dot, so never ca or client);
        made once, valid for LOOPBACK and addresses (say its netns address)."""
        if node == ADMIN_CN:
            raise ValueError(f"a node cannot be named {ADMIN_CN!r}: that name is the orchestrator's Admin credential")
        f = f"node.{node}"
        wanted = [*LOOPBACK, *addresses]
        urls = list(peer_urls)
        if not (self.cert(f).exists() and self.key(f).exists() and _covers(self.cert(f), wanted, urls)):
            # clientAuth too, as etcd's docs advise: the same certificate dials peers. The peer URL as a
            # URI SAN: a member refuses a connection whose hello names a member this certificate is not
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            self._issue(f, node, wanted, usages, urls)
        return self.cert(f), self.key(f)

    def ensure_client(self) -> tuple[Path, Path]:
        """The orchestrator's client (cert, key), for a node started with --client-cert-auth."""
        if not (self.cert(CLIENT_NAME).exists() and self.key(CLIENT_NAME).exists()):
            self._issue(CLIENT_NAME, ADMIN_CN, (), [ExtendedKeyUsageOID.CLIENT_AUTH])
        return self.cert(CLIENT_NAME), self.key(CLIENT_NAME)
