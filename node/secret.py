"""The cluster secret: who may speak Raft on a peer port and call the Admin service.

Without TLS, knowing a random per-cluster secret is what makes a process a member. The
orchestrator writes it into the cluster's state dir (mode 0600) and hands members its path
(`--peer-auth-file`), never the secret itself on a command line. Peers prove they know it by a
challenge-response (HMAC-SHA256 over both sides' nonces, each side with its own role label, so
one side's answer is never valid for the other); the secret never crosses the wire. The Admin
service takes a token derived from it (a different label), so a token seen on the wire lets
nobody speak Raft.

Pure standard library, imported by the node (transport, Admin) and its clients alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

NONCE_BYTES = 32
ADMIN_METADATA_KEY = "quorumlab-admin-token"
_PEER_LABEL = b"quorumlab peer auth v2|"
_ADMIN_LABEL = b"quorumlab admin token v1"


class SecretError(Exception):
    """The secret file cannot be used (missing, empty, or readable by others)."""


def new_secret() -> str:
    """A fresh secret as the file holds it: 64 hex digits (256 random bits)."""
    return secrets.token_hex(32)


def write_secret(path: Path) -> None:
    """Create `path` (mode 0600, never over an existing file) holding a fresh secret.

    Written to a temp file, fsync'd, then linked into place: the name appears only with the whole
    secret behind it, so a full disk or a crash midway never leaves a short file that would refuse
    every later start, and a concurrent writer that loses the link race reads a complete file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_secret() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # FileExistsError if someone else's secret got there first
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        tmp.unlink(missing_ok=True)


def load_secret(path: Path) -> bytes:
    """The secret in `path`; refused when others can read or write the file, as ssh refuses a key."""
    try:
        mode = os.stat(path).st_mode
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise SecretError(f"cannot read the peer auth file {path}: {e.strerror or e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"the peer auth file {path} is accessible by other users (mode {mode & 0o777:o}); chmod 600")
    if len(data) < 16:
        raise SecretError(f"the peer auth file {path} holds no usable secret (at least 16 bytes)")
    return data


def peer_mac(secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes, bound: bytes = b"") -> bytes:
    """A side's proof for one connection: role is b"client" (who connected) or b"server".

    `bound` is the connection's first frame (the hello naming both member ids, or a DISCOVER): the
    proof covers it, so nobody in the middle can change who the connection speaks as."""
    msg = _PEER_LABEL + role + b"|" + client_nonce + server_nonce + b"|" + bound
    return hmac.new(secret, msg, hashlib.sha256).digest()


def admin_token(secret: bytes) -> str:
    """The Admin credential sent as gRPC metadata: derived, so it is not the peer secret itself."""
    return hmac.new(secret, _ADMIN_LABEL, hashlib.sha256).hexdigest()


def same(a: bytes | str, b: bytes | str) -> bool:
    """Constant-time comparison, so a refusal's timing says nothing about how much matched."""
    x = a.encode() if isinstance(a, str) else a
    y = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(x, y)
