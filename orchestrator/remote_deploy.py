"""Put quorumlab on remote hosts: a wheel built here, installed into a venv there, offline.

The wheel is built from this checkout (or installed copy) once per source hash and cached in
~/.cache/quorumlab/deploy/; the node's runtime dependencies come from a wheelhouse made with
`pip download` (once per set of versions, the versions installed here), so a host needs no
internet: `pip install --no-index --find-links`. A host whose venv carries the same source hash
is skipped (warm deploy). With `deploy: false` the host's `python` is used as it is (an install
path that already has quorumlab); either way its version is checked, and for engine etcd the
etcd binary.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

from .launcher import package_root
from .remote import HostConn, RemoteError

NODE_DEPS = ("grpcio", "protobuf", "msgpack", "sortedcontainers", "uvloop", "prometheus_client")
PACKAGES = ("node", "orchestrator", "chaos", "tui", "bench")
MIN_PYTHON = (3, 11)
CACHE_ENV = "QUORUMLAB_CACHE"  # where built wheels and wheelhouses are kept (tests point it at their tmp dir)


def cache_dir() -> Path:
    """$QUORUMLAB_CACHE, else $XDG_CACHE_HOME/quorumlab/deploy, else ~/.cache/quorumlab/deploy."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "quorumlab" / "deploy"


def source_hash() -> str:
    """A hash of every file the wheel is built from: the same hash means the same code on the host."""
    root = package_root()
    h = hashlib.sha256()
    files = [root / "pyproject.toml"] if (root / "pyproject.toml").exists() else []  # absent when installed
    for pkg in PACKAGES:
        files += sorted(p for p in (root / pkg).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RemoteError(f"{what}: `{' '.join(cmd[:6])} …` failed: {(r.stderr or r.stdout).strip()[-400:]}")


def build_wheel(digest: str) -> Path:
    """The project's wheel for this source hash, cached; written here as a zip (a pure-Python wheel
    is a zip with a dist-info), so neither the network, setuptools nor `wheel` is needed, and an
    installed copy of quorumlab deploys as well as a checkout."""
    out = cache_dir() / f"wheel-{digest}"
    found = sorted(out.glob("quorumlab-*.whl")) if out.is_dir() else []
    if found:
        return found[0]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quorumlab-{_version()}-py3-none-any.whl"
    tmp = path.with_suffix(".tmp")
    try:
        _write_wheel(tmp, package_root(), _version())
    except OSError as e:
        raise RemoteError(f"building quorumlab's wheel here: {e}") from None
    tmp.replace(path)
    return path


def _version() -> str:
    try:
        return importlib.metadata.version("quorumlab")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _write_wheel(path: Path, root: Path, version: str) -> None:
    """PEP 427: the packages' files, then METADATA, WHEEL, entry_points.txt and RECORD (with hashes)."""
    info = f"quorumlab-{version}.dist-info"
    records: list[str] = []

    def add(z: zipfile.ZipFile, name: str, data: bytes) -> None:
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in PACKAGES:
            for f in sorted((root / pkg).rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                    add(z, f.relative_to(root).as_posix(), f.read_bytes())
        add(z, f"{info}/METADATA", f"Metadata-Version: 2.1\nName: quorumlab\nVersion: {version}\n".encode())
        wheel = "Wheel-Version: 1.0\nGenerator: quorumlab\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        add(z, f"{info}/WHEEL", wheel.encode())
        add(z, f"{info}/entry_points.txt", b"[console_scripts]\norchestrate = orchestrator.cli:main\n")
        records.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(records) + "\n")


def wheelhouse(py: str) -> Path:
    """Wheels of the node's runtime dependencies, at the versions installed here, for Python `py` (3.11)."""
    pins = []
    for d in NODE_DEPS:
        try:
            pins.append(f"{d}=={importlib.metadata.version(d)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    key = hashlib.sha256(("|".join(pins) + py).encode()).hexdigest()[:12]
    out = cache_dir() / f"deps-{key}"
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            py,
            "-d",
            str(out),
            *pins,
        ],
        f"downloading the node's dependencies ({', '.join(pins)}) once into {out}; "
        "on a machine without internet, copy such a wheelhouse there",
    )
    (out / ".complete").touch()
    return out


def check_python(c: HostConn, python: str) -> str:
    """The host python's version as 'X.Y'; a RemoteError saying what to install if missing or too old."""
    code, out, err = c.run(
        f"{shlex.quote(python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'", timeout=20
    )
    if code != 0:
        raise RemoteError(
            f"host {c.host.name}: `{python}` does not run there ({(err or out).strip()[-200:] or f'status {code}'}); "
            f"install Python >= {'.'.join(map(str, MIN_PYTHON))} or set hosts[].python"
        )
    ver = out.strip()
    if tuple(int(x) for x in ver.split(".")) < MIN_PYTHON:
        raise RemoteError(
            f"host {c.host.name}: {python} is Python {ver}; quorumlab needs >= {'.'.join(map(str, MIN_PYTHON))} "
            "(set hosts[].python to a newer one)"
        )
    return ver


def check_etcd(c: HostConn) -> None:
    code, _, _ = c.run("command -v etcd", timeout=10)
    if code != 0:
        raise RemoteError(
            f"host {c.host.name}: engine etcd needs an etcd binary on the PATH there (Debian: apt-get install "
            "etcd-server)"
        )


def deploy(c: HostConn, engine: str) -> tuple[str, bool]:
    """Make quorumlab runnable on the host; (the python that runs nodes, whether anything was installed)."""
    h = c.host
    if engine == "etcd":
        check_etcd(c)
    if not h.deploy:
        check_python(c, h.python)
        code, _, err = c.run(f"{shlex.quote(h.python)} -c 'import node.client'", timeout=30)
        if code != 0:
            raise RemoteError(
                f"host {h.name}: {h.python} cannot import quorumlab's node ({err.strip()[-200:]}); install it there "
                "or set hosts[].deploy: true"
            )
        return h.python, False
    c.connect()
    venv = f"{c.work_dir}/venv"
    vpy = f"{venv}/bin/python"
    digest = source_hash()
    marker = f"{venv}/quorumlab-source"
    ver = check_python(c, h.python)  # also when warm: the cluster.yaml must name a working python
    q = shlex.quote
    code, out, _ = c.run(f"cat {q(marker)} 2>/dev/null", timeout=10)
    if code == 0 and out.strip() == digest:
        return vpy, False  # warm: this code is already there
    wheel = build_wheel(digest)
    deps = wheelhouse(ver)
    up = f"{c.work_dir}/upload"
    c.run(f"rm -rf {q(up)} && mkdir -p -m 700 {q(up)}", check=True)
    for f in [wheel, *sorted(deps.glob("*.whl"))]:
        c.put(f, f"{up}/{f.name}", 0o644)
    c.run(f"[ -x {q(vpy)} ] || {q(h.python)} -m venv {q(venv)}", timeout=120, check=True)
    names = " ".join(d for d in NODE_DEPS if any(deps.glob(f"{d}-*.whl")))
    pip = f"{q(vpy)} -m pip install -q --disable-pip-version-check --no-index --find-links {q(up)}"
    c.run(f"{pip} {names} && {pip} --no-deps --force-reinstall {q(up + '/' + wheel.name)}", timeout=600, check=True)
    c.run(f"echo {digest} > {q(marker)} && rm -rf {q(up)}", check=True)
    return vpy, True
