"""etcd v3.4's auth store: users, roles, key permissions, the enabled flag and the auth revision.

Replicated like the keys: every change is a log entry applied by every member (node/kv/apply.py)
and the state travels in the state-machine snapshot (`dump`/`load`). Passwords reach the log
already hashed (`hash_password` runs on the member that takes the request), never in plaintext.

Simple tokens (`<16 letters>.<raft index>`) are each member's memory, as in etcd: a member
assigns one when it applies the Authenticate entry, so a token from any member works on all of
them; they expire after TOKEN_TTL seconds unused and vanish on auth disable, on a password
change or deletion of their user, and on restart (beyond what the replayed log re-assigns). The
Authenticate entry carries the proposer's wall-clock time and the TTL runs from it, so a replayed
entry re-assigns a token only for what is left of its TTL: an expired token stays dead after restart.

The permission rules are etcd's (auth/store.go, range_perm_cache.go): a user with the root role
may do anything; a single key needs a permission interval containing it; a range needs the union
of the user's intervals to cover it; a permission's range_end "\\x00" means "to the end".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from node.errors import EtcdError, Reason
from node.pb import auth_pb2, rpc_pb2

ROOT = "root"
TOKEN_TTL = 300.0  # etcd's --auth-token-ttl default, seconds since last use
TOKEN_TTL_ENV = "QUORUMLAB_AUTH_TOKEN_TTL"  # etcd's --auth-token-ttl, as an environment knob
TOKEN_LETTERS = string.ascii_lowercase + string.ascii_uppercase
READ, WRITE, READWRITE = auth_pb2.Permission.READ, auth_pb2.Permission.WRITE, auth_pb2.Permission.READWRITE
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB, tens of ms: etcd's bcrypt cost 10 is of the same order

# a range end: bytes, or None for "no end"
End = bytes | None


@dataclass(frozen=True)
class AuthInfo:
    """Who sent a request and the auth revision their token was checked at (etcd's AuthInfo)."""

    user: str
    revision: int


@dataclass
class User:
    password: str  # hash_password() output; "" for a no-password user
    roles: list[str] = field(default_factory=list)  # sorted
    no_password: bool = False


@dataclass(frozen=True)
class Perm:
    type: int
    key: bytes
    range_end: bytes


def hash_password(password: str) -> str:
    """A salted scrypt hash, "scrypt$<salt>$<hash>" in hex, for the log and the snapshot."""
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)  # type: ignore[arg-type]
    return f"scrypt${salt.hex()}${h.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        kind, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)  # type: ignore[arg-type]
    except ValueError:
        return False
    return hmac.compare_digest(got, bytes.fromhex(want))


def token_prefix() -> str:
    return "".join(secrets.choice(TOKEN_LETTERS) for _ in range(16))


def authenticate_extra(now: float | None = None) -> str:
    """What an Authenticate entry carries: `<token prefix>@<proposer's wall-clock seconds>`."""
    return f"{token_prefix()}@{time.time() if now is None else now:.3f}"


def token_ttl_from_env() -> float:
    """The simple-token TTL: $QUORUMLAB_AUTH_TOKEN_TTL seconds (tests shorten it), else etcd's 300."""
    raw = os.environ.get(TOKEN_TTL_ENV, "")
    if not raw:
        return TOKEN_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if not 0 < ttl < 1e9:
        raise SystemExit(f"error: {TOKEN_TTL_ENV} must be a positive number of seconds, got {raw!r}")
    return ttl


def _interval(key: bytes, range_end: bytes) -> tuple[bytes, End]:
    """A permission's interval: a single key, [key, end), or [key, ∞) for end "\\x00"."""
    if not range_end:
        return key, key + b"\x00"
    return key, None if range_end == b"\x00" else range_end


def _lt(a: End, b: End) -> bool:
    """a < b for range ends, None being infinity."""
    if a is None:
        return False
    return b is None or a < b


def _covered(ivls: list[tuple[bytes, End]], begin: bytes, end: End) -> bool:
    """etcd's IntervalTree.Contains: the intervals overlapping [begin, end) cover it without gaps."""
    hit = [(b, e) for b, e in ivls if _lt(b, end) and _lt(begin, e)]
    if not hit:
        return False
    hit.sort(key=lambda iv: iv[0])
    if hit[0][0] > begin:
        return False
    max_end = hit[0][1]
    for b, e in hit[1:]:
        if _lt(max_end, b):
            return False
        if _lt(max_end, e):
            max_end = e
    return not _lt(max_end, end)


class AuthStore:
    """The replicated auth state plus this member's simple tokens."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        ttl: float | None = None,
    ) -> None:
        self.enabled = False
        self.revision = 1  # etcd commits revision 1 when it creates the store
        self.users: dict[str, User] = {}
        self.roles: dict[str, list[Perm]] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expiry); local, not replicated
        self._clock = clock
        self._wall = wall
        self.ttl = token_ttl_from_env() if ttl is None else ttl
        self._perm_cache: dict[str, tuple[list[tuple[bytes, End]], list[tuple[bytes, End]]]] = {}

    # -- snapshot --------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "rev": self.revision,
            "users": [[n, u.password, list(u.roles), u.no_password] for n, u in sorted(self.users.items())],
            "roles": [[n, [[p.type, p.key, p.range_end] for p in ps]] for n, ps in sorted(self.roles.items())],
        }

    def load(self, d: dict[str, Any] | None) -> None:
        """Replace the state with dump() output (None: a snapshot from before auth existed)."""
        d = d or {}
        self.enabled = bool(d.get("enabled", False))
        self.revision = int(d.get("rev", 1))
        self.users = {
            str(n): User(str(pw), [str(r) for r in roles], bool(np)) for n, pw, roles, np in d.get("users", [])
        }
        self.roles = {str(n): [Perm(int(t), bytes(k), bytes(e)) for t, k, e in ps] for n, ps in d.get("roles", [])}
        self.tokens.clear()
        self._perm_cache.clear()

    # -- tokens (local) --------------------------------------------------------------
    def token_user(self, token: str) -> str | None:
        """The user a valid token was assigned to (refreshing its TTL), else None."""
        hit = self.tokens.get(token)
        if hit is None:
            return None
        now = self._clock()
        if hit[1] < now:
            del self.tokens[token]
            return None
        self.tokens[token] = (hit[0], now + self.ttl)
        return hit[0]

    def _assign(self, user: str, token: str, issued_at: float | None) -> None:
        """Assign for what is left of the TTL since issued_at (the proposer's wall clock; None:
        an entry from before it was carried), or not at all once that has run out."""
        left = self.ttl if issued_at is None else min(self.ttl, self.ttl - (self._wall() - issued_at))
        if left <= 0:
            return
        now = self._clock()
        if len(self.tokens) > 1024:  # drop expired ones now and then
            self.tokens = {t: v for t, v in self.tokens.items() if v[1] >= now}
        self.tokens[token] = (user, now + left)

    def _invalidate_user(self, user: str) -> None:
        self.tokens = {t: v for t, v in self.tokens.items() if v[0] != user}

    # -- permission checks (etcd's isOpPermitted) ------------------------------------
    def _perms(self, user: str) -> tuple[list[tuple[bytes, End]], list[tuple[bytes, End]]]:
        got = self._perm_cache.get(user)
        if got is None:
            reads: list[tuple[bytes, End]] = []
            writes: list[tuple[bytes, End]] = []
            u = self.users.get(user)
            for role in u.roles if u else []:
                for p in self.roles.get(role, []):
                    iv = _interval(p.key, p.range_end)
                    if p.type in (READ, READWRITE):
                        reads.append(iv)
                    if p.type in (WRITE, READWRITE):
                        writes.append(iv)
            got = self._perm_cache[user] = (reads, writes)
        return got

    def _is_root(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def check(self, ai: AuthInfo | None, key: bytes, range_end: bytes, write: bool) -> None:
        """Raise unless the request's user may read (or write) key or [key, range_end)."""
        if not self.enabled:
            return
        if ai is None or ai.revision == 0:
            raise EtcdError(Reason.USER_EMPTY)
        if ai.revision < self.revision:
            raise EtcdError(Reason.AUTH_OLD_REVISION)
        if ai.user not in self.users:
            raise EtcdError(Reason.PERMISSION_DENIED)
        if self._is_root(ai.user):
            return
        ivls = self._perms(ai.user)[1 if write else 0]
        if not range_end:
            if any(b <= key and _lt(key, e) for b, e in ivls):
                return
        elif _covered(ivls, key, None if range_end == b"\x00" else range_end):
            return
        raise EtcdError(Reason.PERMISSION_DENIED)

    def check_admin(self, ai: AuthInfo | None) -> None:
        """etcd's IsAdminPermitted: the user must hold the root role."""
        if not self.enabled:
            return
        if ai is None or not ai.user:
            raise EtcdError(Reason.USER_EMPTY)
        if ai.user not in self.users:
            raise EtcdError(Reason.USER_NOT_FOUND)
        if not self._is_root(ai.user):
            raise EtcdError(Reason.PERMISSION_DENIED)

    def check_txn(
        self, ai: AuthInfo | None, t: rpc_pb2.TxnRequest, lease_keys: Callable[[int], Iterable[bytes]]
    ) -> None:
        """etcd's checkTxnAuth: compares and ranges need read, puts and deletes write (and read
        for prev_kv). Stricter than etcd 3.4 in three ways: a put with prev_kv also needs read
        (else a write-only user reads the old value), a put with a lease needs write on the keys
        already on that lease (as a single Put, etcd's checkLeasePuts; lease_keys gives them), and
        nested txns are checked too."""
        for c in t.compare:
            self.check(ai, c.key, c.range_end, False)
        for ops in (t.success, t.failure):
            for op in ops:
                which = op.WhichOneof("request")
                if which == "request_range":
                    self.check(ai, op.request_range.key, op.request_range.range_end, False)
                elif which == "request_put":
                    p = op.request_put
                    self.check(ai, p.key, b"", True)
                    if p.prev_kv:
                        self.check(ai, p.key, b"", False)
                    for k in sorted(lease_keys(p.lease)) if p.lease else ():
                        self.check(ai, k, b"", True)
                elif which == "request_delete_range":
                    d = op.request_delete_range
                    if d.prev_kv:
                        self.check(ai, d.key, d.range_end, False)
                    self.check(ai, d.key, d.range_end, True)
                elif which == "request_txn":
                    self.check_txn(ai, op.request_txn, lease_keys)

    def password_of(self, name: str) -> str:
        """etcd's CheckPassword up to the hash comparison (the caller runs that off the loop)."""
        if not self.enabled:
            raise EtcdError(Reason.AUTH_NOT_ENABLED)
        u = self.users.get(name)
        if u is None:
            raise EtcdError(Reason.AUTH_FAILED)
        if u.no_password:
            raise EtcdError(Reason.NO_PASSWORD_USER)
        return u.password

    # -- applying entries --------------------------------------------------------------
    def _commit(self) -> None:
        self.revision += 1
        self._perm_cache.clear()

    def apply(self, method: str, body: bytes, ai: AuthInfo | None, index: int, extra: str) -> Any:
        """Apply one auth entry (deterministic but for the local token table); raises EtcdError."""
        if method in _ADMIN:
            self.check_admin(ai)
        fn = getattr(self, "_apply_" + method, None)
        req_type = _REQUESTS.get(method)
        if fn is None or req_type is None:
            raise ValueError(f"unknown auth operation {method}")
        return fn(req_type.FromString(body), ai, index, extra)

    def _apply_AuthEnable(self, r: Any, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if not self.enabled:
            u = self.users.get(ROOT)
            if u is None:
                raise EtcdError(Reason.ROOT_USER_NOT_EXIST)
            if ROOT not in u.roles:
                raise EtcdError(Reason.ROOT_ROLE_NOT_EXIST)
            self.enabled = True
            self._perm_cache.clear()
        return rpc_pb2.AuthEnableResponse()

    def _apply_AuthDisable(self, r: Any, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if self.enabled:
            self.enabled = False
            self._commit()
            self.tokens.clear()
        return rpc_pb2.AuthDisableResponse()

    def _apply_AuthStatus(self, r: Any, ai: AuthInfo | None, index: int, extra: str) -> Any:
        """etcd 3.5's AuthStatus (root only once enabled, a log entry like every auth read)."""
        return rpc_pb2.AuthStatusResponse(enabled=self.enabled, authRevision=self.revision)

    def _apply_Authenticate(self, r: rpc_pb2.AuthenticateRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if not self.enabled:
            raise EtcdError(Reason.AUTH_NOT_ENABLED)
        u = self.users.get(r.name)
        if u is None or u.no_password:
            raise EtcdError(Reason.AUTH_FAILED)
        prefix, _, at = extra.partition("@")
        token = f"{prefix}.{index}"
        self._assign(r.name, token, float(at) if at else None)
        return rpc_pb2.AuthenticateResponse(token=token)

    def _apply_UserAdd(self, r: rpc_pb2.AuthUserAddRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if not r.name:
            raise EtcdError(Reason.USER_EMPTY)
        if r.name in self.users:
            raise EtcdError(Reason.USER_ALREADY_EXIST)
        nopw = r.HasField("options") and r.options.no_password
        self.users[r.name] = User("" if nopw else r.password, [], nopw)
        self._commit()
        return rpc_pb2.AuthUserAddResponse()

    def _apply_UserDelete(self, r: rpc_pb2.AuthUserDeleteRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if self.enabled and r.name == ROOT:
            raise EtcdError(Reason.INVALID_AUTH_MGMT)
        if r.name not in self.users:
            raise EtcdError(Reason.USER_NOT_FOUND)
        del self.users[r.name]
        self._commit()
        self._invalidate_user(r.name)
        return rpc_pb2.AuthUserDeleteResponse()

    def _apply_UserChangePassword(
        self, r: rpc_pb2.AuthUserChangePasswordRequest, ai: AuthInfo | None, index: int, extra: str
    ) -> Any:
        u = self.users.get(r.name)
        if u is None:
            raise EtcdError(Reason.USER_NOT_FOUND)
        u.password = r.password
        self._commit()
        self._invalidate_user(r.name)
        return rpc_pb2.AuthUserChangePasswordResponse()

    def _apply_UserGrantRole(
        self, r: rpc_pb2.AuthUserGrantRoleRequest, ai: AuthInfo | None, index: int, extra: str
    ) -> Any:
        u = self.users.get(r.user)
        if u is None:
            raise EtcdError(Reason.USER_NOT_FOUND)
        if r.role != ROOT and r.role not in self.roles:
            raise EtcdError(Reason.ROLE_NOT_FOUND)
        if r.role not in u.roles:
            u.roles = sorted([*u.roles, r.role])
            self._commit()
        return rpc_pb2.AuthUserGrantRoleResponse()

    def _apply_UserRevokeRole(
        self, r: rpc_pb2.AuthUserRevokeRoleRequest, ai: AuthInfo | None, index: int, extra: str
    ) -> Any:
        if self.enabled and r.name == ROOT and r.role == ROOT:
            raise EtcdError(Reason.INVALID_AUTH_MGMT)
        u = self.users.get(r.name)
        if u is None:
            raise EtcdError(Reason.USER_NOT_FOUND)
        if r.role not in u.roles:
            raise EtcdError(Reason.ROLE_NOT_GRANTED)
        u.roles = [x for x in u.roles if x != r.role]
        self._commit()
        return rpc_pb2.AuthUserRevokeRoleResponse()

    def _apply_UserGet(self, r: rpc_pb2.AuthUserGetRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        try:
            self.check_admin(ai)
        except EtcdError:
            if ai is None or r.name != ai.user:
                raise
        u = self.users.get(r.name)
        if u is None:
            raise EtcdError(Reason.USER_NOT_FOUND)
        return rpc_pb2.AuthUserGetResponse(roles=u.roles)

    def _apply_UserList(self, r: Any, ai: AuthInfo | None, index: int, extra: str) -> Any:
        return rpc_pb2.AuthUserListResponse(users=sorted(self.users))

    def _apply_RoleAdd(self, r: rpc_pb2.AuthRoleAddRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if not r.name:
            raise EtcdError(Reason.ROLE_EMPTY)
        if r.name in self.roles:
            raise EtcdError(Reason.ROLE_ALREADY_EXIST)
        self.roles[r.name] = []
        self._commit()
        return rpc_pb2.AuthRoleAddResponse()

    def _apply_RoleGet(self, r: rpc_pb2.AuthRoleGetRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        try:
            self.check_admin(ai)
        except EtcdError:
            u = self.users.get(ai.user) if ai is not None else None
            if u is None or r.role not in u.roles:
                raise
        perms = self.roles.get(r.role)
        if perms is None:
            raise EtcdError(Reason.ROLE_NOT_FOUND)
        resp = rpc_pb2.AuthRoleGetResponse()
        for p in perms:
            resp.perm.add(permType=p.type, key=p.key, range_end=p.range_end)  # type: ignore[arg-type]
        return resp

    def _apply_RoleList(self, r: Any, ai: AuthInfo | None, index: int, extra: str) -> Any:
        return rpc_pb2.AuthRoleListResponse(roles=sorted(self.roles))

    def _apply_RoleDelete(self, r: rpc_pb2.AuthRoleDeleteRequest, ai: AuthInfo | None, index: int, extra: str) -> Any:
        if self.enabled and r.role == ROOT:
            raise EtcdError(Reason.INVALID_AUTH_MGMT)
        if r.role not in self.roles:
            raise EtcdError(Reason.ROLE_NOT_FOUND)
        del self.roles[r.role]
        for u in self.users.values():
            if r.role in u.roles:
                u.roles = [x for x in u.roles if x != r.role]
        self._commit()
        return rpc_pb2.AuthRoleDeleteResponse()

    def _apply_RoleGrantPermission(
        self, r: rpc_pb2.AuthRoleGrantPermissionRequest, ai: AuthInfo | None, index: int, extra: str
    ) -> Any:
        perms = self.roles.get(r.name)
        if perms is None:
            raise EtcdError(Reason.ROLE_NOT_FOUND)
        new = Perm(int(r.perm.permType), r.perm.key, r.perm.range_end)
        for i, p in enumerate(perms):
            if p.key == new.key and p.range_end == new.range_end:
                perms[i] = new
                break
        else:
            perms.append(new)
            perms.sort(key=lambda p: p.key)  # stable, as etcd's sort by key only
        self._commit()
        return rpc_pb2.AuthRoleGrantPermissionResponse()

    def _apply_RoleRevokePermission(
        self, r: rpc_pb2.AuthRoleRevokePermissionRequest, ai: AuthInfo | None, index: int, extra: str
    ) -> Any:
        perms = self.roles.get(r.role)
        if perms is None:
            raise EtcdError(Reason.ROLE_NOT_FOUND)
        kept = [p for p in perms if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(perms):
            raise EtcdError(Reason.PERMISSION_NOT_GRANTED)
        self.roles[r.role] = kept
        self._commit()
        return rpc_pb2.AuthRoleRevokePermissionResponse()


_REQUESTS: dict[str, Any] = {
    "AuthEnable": rpc_pb2.AuthEnableRequest,
    "AuthDisable": rpc_pb2.AuthDisableRequest,
    "AuthStatus": rpc_pb2.AuthStatusRequest,
    "Authenticate": rpc_pb2.AuthenticateRequest,
    "UserAdd": rpc_pb2.AuthUserAddRequest,
    "UserGet": rpc_pb2.AuthUserGetRequest,
    "UserList": rpc_pb2.AuthUserListRequest,
    "UserDelete": rpc_pb2.AuthUserDeleteRequest,
    "UserChangePassword": rpc_pb2.AuthUserChangePasswordRequest,
    "UserGrantRole": rpc_pb2.AuthUserGrantRoleRequest,
    "UserRevokeRole": rpc_pb2.AuthUserRevokeRoleRequest,
    "RoleAdd": rpc_pb2.AuthRoleAddRequest,
    "RoleGet": rpc_pb2.AuthRoleGetRequest,
    "RoleList": rpc_pb2.AuthRoleListRequest,
    "RoleDelete": rpc_pb2.AuthRoleDeleteRequest,
    "RoleGrantPermission": rpc_pb2.AuthRoleGrantPermissionRequest,
    "RoleRevokePermission": rpc_pb2.AuthRoleRevokePermissionRequest,
}
# etcd's needAdminPermission (UserGet and RoleGet decide for themselves)
_ADMIN = frozenset(_REQUESTS) - {"Authenticate", "UserGet", "RoleGet"}
