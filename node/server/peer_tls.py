"""TLS on the peer port, with etcd's flags and meaning (--peer-cert-file, --peer-key-file,
--peer-trusted-ca-file, --peer-client-cert-auth).

The listener speaks TLS when --listen-peer-urls is https://; with --peer-client-cert-auth it asks
every dialer for a certificate signed by the peer CA. A member dials an https:// peer URL over TLS,
verifying the peer's certificate (and its address or name) against the peer CA, and shows its own
certificate. The cluster secret's handshake (node/secret.py) still runs inside TLS when given.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class PeerTLSError(Exception):
    """A peer TLS file cannot be used (unreadable, or not a certificate/key)."""


@dataclass(frozen=True)
class PeerTLS:
    server: ssl.SSLContext | None  # the listener's (None: it serves plaintext)
    client: ssl.SSLContext  # used for every https:// peer URL this member dials

    @classmethod
    def from_files(
        cls, cert: Path | None, key: Path | None, ca: Path | None, client_cert_auth: bool, serve_tls: bool
    ) -> PeerTLS:
        """Contexts for both directions; serve_tls: the listen URL is https (so cert and key are given)."""
        try:
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
            if cert is not None and key is not None:
                client.load_cert_chain(str(cert), str(key))
            server: ssl.SSLContext | None = None
            if serve_tls:
                assert cert is not None and key is not None, "checked by the flags"
                server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                server.minimum_version = ssl.TLSVersion.TLSv1_2
                server.load_cert_chain(str(cert), str(key))
                if client_cert_auth:
                    assert ca is not None, "checked by the flags"
                    server.load_verify_locations(cafile=str(ca))
                    server.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as e:
            raise PeerTLSError(f"cannot use the peer TLS files: {e}") from e
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        return cls(server, client)


def is_https(url: str) -> bool:
    return url.strip().lower().startswith("https://")


def describe(e: BaseException) -> str:
    """One line for a failed TLS handshake (ssl's own texts name the reason: unknown ca, ...)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the peer's certificate is not trusted: {e.verify_message or e.reason}"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e.reason or e}"
    return f"TLS handshake failed: {e or type(e).__name__}"
