"""etcd's error constants and the one error type that carries them, on both ends of the wire.

A node answers a failed request with a gRPC status code and etcd's exact description text
(`../shared/ETCD_API.md`); etcd's Go client maps those texts back to typed errors (rpctypes).
We do the same: the node raises `EtcdError(Reason.X)`, `node.api` sends `(e.code, str(e))`, and
`node.client` turns a received `(code, details)` back into a `Reason` by looking the whole text
up in this table (`lookup`), so callers decide by code and reason, never by a substring of a
message. Texts are part of the API: etcdctl and etcd's clients compare them, keep them byte-exact.

This module is the bottom layer of the node (beside `node.raft`): it imports nothing of ours.
"""

from __future__ import annotations

import enum

import grpc

_C = grpc.StatusCode


@enum.unique  # two reasons with the same (code, text) would silently become one
class Reason(enum.Enum):
    """Why a request failed: etcd's gRPC code and exact text, or a reason without a fixed text."""

    code: grpc.StatusCode
    text: str

    def __init__(self, code: grpc.StatusCode, text: str) -> None:
        self.code = code
        self.text = text

    # etcdserver: Unavailable, the request may or may not have been taken
    NO_LEADER = (_C.UNAVAILABLE, "etcdserver: no leader")
    LEADER_CHANGED = (_C.UNAVAILABLE, "etcdserver: leader changed")
    TIMEOUT = (_C.UNAVAILABLE, "etcdserver: request timed out")
    TIMEOUT_DUE_TO_LEADER_FAIL = (
        _C.UNAVAILABLE,
        "etcdserver: request timed out, possibly due to previous leader failure",
    )
    TIMEOUT_DUE_TO_CONNECTION_LOST = (_C.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost")
    STOPPED = (_C.UNAVAILABLE, "etcdserver: server stopped")
    # a proposal the Raft core dropped for a reason other than "no leader" (node.raft.DropReason)
    LEADER_REMOVED = (_C.UNAVAILABLE, "etcdserver: leader was removed from the cluster")
    LEADERSHIP_TRANSFER = (_C.UNAVAILABLE, "etcdserver: leadership transfer in progress")
    CONF_CHANGE_PENDING = (_C.UNAVAILABLE, "etcdserver: a configuration change is already in progress")
    # ResourceExhausted
    TOO_MANY_REQUESTS = (_C.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
    NO_SPACE = (_C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
    # InvalidArgument
    REQUEST_TOO_LARGE = (_C.INVALID_ARGUMENT, "etcdserver: request is too large")
    KEY_NOT_PROVIDED = (_C.INVALID_ARGUMENT, "etcdserver: key is not provided")
    INVALID_SORT_OPTION = (_C.INVALID_ARGUMENT, "etcdserver: invalid sort option")
    TOO_MANY_OPS = (_C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
    DUPLICATE_KEY = (_C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    KEY_NOT_FOUND = (_C.INVALID_ARGUMENT, "etcdserver: key not found")
    PEER_URLS_NOT_PROVIDED = (_C.INVALID_ARGUMENT, "etcdserver: member peer URLs not provided")
    # OutOfRange
    COMPACTED = (_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    FUTURE_REV = (_C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    LEASE_TTL_TOO_LARGE = (_C.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    # NotFound
    LEASE_NOT_FOUND = (_C.NOT_FOUND, "etcdserver: requested lease not found")
    MEMBER_NOT_FOUND = (_C.NOT_FOUND, "etcdserver: member not found")
    # FailedPrecondition
    LEASE_EXISTS = (_C.FAILED_PRECONDITION, "etcdserver: lease already exists")
    NOT_LEADER = (_C.FAILED_PRECONDITION, "etcdserver: not leader")
    BAD_LEADER_TRANSFEREE = (_C.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
    PEER_URL_EXISTS = (_C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
    MEMBER_NOT_LEARNER = (_C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
    LEARNER_NOT_READY = (
        _C.FAILED_PRECONDITION,
        "etcdserver: can only promote a learner member which is in sync with leader",
    )
    # auth (etcd's rpctypes; the codes are etcd's, not always the obvious ones)
    ROOT_USER_NOT_EXIST = (_C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
    ROOT_ROLE_NOT_EXIST = (_C.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
    USER_ALREADY_EXIST = (_C.FAILED_PRECONDITION, "etcdserver: user name already exists")
    USER_EMPTY = (_C.INVALID_ARGUMENT, "etcdserver: user name is empty")
    USER_NOT_FOUND = (_C.FAILED_PRECONDITION, "etcdserver: user name not found")
    ROLE_ALREADY_EXIST = (_C.FAILED_PRECONDITION, "etcdserver: role name already exists")
    ROLE_NOT_FOUND = (_C.FAILED_PRECONDITION, "etcdserver: role name not found")
    ROLE_EMPTY = (_C.INVALID_ARGUMENT, "etcdserver: role name is empty")
    AUTH_FAILED = (_C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
    PERMISSION_DENIED = (_C.PERMISSION_DENIED, "etcdserver: permission denied")
    ROLE_NOT_GRANTED = (_C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
    PERMISSION_NOT_GRANTED = (_C.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role")
    AUTH_NOT_ENABLED = (_C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
    INVALID_AUTH_TOKEN = (_C.UNAUTHENTICATED, "etcdserver: invalid auth token")
    INVALID_AUTH_MGMT = (_C.INVALID_ARGUMENT, "etcdserver: invalid auth management")
    AUTH_OLD_REVISION = (_C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")
    # etcd 3.4's Maintenance service (Defragment, Hash, HashKV, Snapshot) returns the auth store's
    # own errors unmapped: clients see code Unknown and these texts
    RAW_PERMISSION_DENIED = (_C.UNKNOWN, "auth: permission denied")
    RAW_USER_EMPTY = (_C.UNKNOWN, "auth: user name is empty")
    RAW_USER_NOT_FOUND = (_C.UNKNOWN, "auth: user not found")
    RAW_INVALID_AUTH_TOKEN = (_C.UNKNOWN, "auth: invalid auth token")
    # etcd 3.4 has no gRPC mapping for this one: its clients see code Unknown with the store's text
    NO_PASSWORD_USER = (_C.UNKNOWN, "auth: authentication failed, password was given for no password user")
    # quorumlab's own
    NO_FAULT_INJECTION = (
        _C.FAILED_PRECONDITION,
        "quorumlab: fault injection is not enabled on this node (start it with --enable-fault-injection)",
    )
    DOWNGRADE_UNSUPPORTED = (_C.UNIMPLEMENTED, "quorumlab: downgrade is not supported")
    ADMIN_UNAUTHENTICATED = (
        _C.UNAUTHENTICATED,
        "quorumlab: the Admin service needs the cluster's credential (the token derived from --peer-auth-file)",
    )
    ADMIN_DENIED = (_C.PERMISSION_DENIED, "quorumlab: wrong Admin credential for this cluster")
    # no fixed text: the text travels with the error
    INVALID_FAULT_RULE = (_C.INVALID_ARGUMENT, "")  # node.faults.FaultRuleError's message
    UNREACHABLE = (_C.UNAVAILABLE, "")  # client side: the request never reached a server (see node.client)
    UNKNOWN = (_C.UNKNOWN, "")  # client side: a text that is none of the above; the code still says what it is


_BY_TEXT = {r.text.casefold(): r for r in Reason if r.text}


def lookup(text: str) -> Reason:
    """The reason whose text is exactly `text` (ignoring case), else UNKNOWN; never a substring."""
    return _BY_TEXT.get(text.casefold(), Reason.UNKNOWN)


class EtcdError(Exception):
    """A request failed as a whole: `str(e)` is the text a client sees, `code` the gRPC status.

    Raised by the node (`EtcdError(Reason.NO_LEADER)`) and, as node.client.ClientError, by the
    client for what a node answered. `code` defaults to the reason's; a received error keeps
    the code it came with (node.client.ClientError: None when no status was received at all).
    """

    def __init__(self, reason: Reason, text: str | None = None, code: grpc.StatusCode | None = None) -> None:
        super().__init__(reason.text if text is None else text)
        self.reason = reason
        self.code: grpc.StatusCode | None = reason.code if code is None else code


def from_status(code: grpc.StatusCode | None, text: str) -> EtcdError:
    """The typed error for a received (code, text): the reason by exact lookup, the code as received."""
    return EtcdError(lookup(text), text, code)
