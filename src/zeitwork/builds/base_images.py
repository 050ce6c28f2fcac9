"""Base images for detected stacks, made here from Debian packages (no Docker Hub needed).

Each base is a Debian root file system made by ``mmdebstrap`` from the host's configured apt
sources (``/etc/apt/sources.list`` and ``sources.list.d``), turned into an image with
``buildah from scratch`` + ``buildah add`` + ``buildah commit`` in the given buildah storage
(vfs), and named ``localhost/zeitwork/<stack>:bookworm``. ``ensure`` builds a base once and
keeps it; a lock file beside the storage makes concurrent first uses wait for one build.

A user supplies their own bases with a mapping from stack to image reference
(``parse_overrides("python=registry.example/py:3.12,node=...")``, the builder's
``ZEITWORK_BUILD_BASE_IMAGES`` setting); an overridden stack is never built here, its
reference goes to the build as ``--build-arg BASE_IMAGE=...`` (``BUILDER_IMAGE`` for Go).

A base made once can be copied into another storage (``copy_to``, e.g. each project's
layer-cache storage) or pushed to the platform registry (``publish``).

These functions block (subprocesses of tens of seconds): call them from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zeitwork.core.errors import InvalidInput, ZeitworkError

REPOSITORY = "localhost/zeitwork"
SUITE = "bookworm"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
#: What a base leaves out: documentation and translations (copyright files stay).
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
_MMDEBSTRAP_TIMEOUT = 900.0
_BUILDAH_TIMEOUT = 600.0
_NAME = re.compile(r"[a-z][a-z0-9-]*")


class BaseImageError(ZeitworkError):
    """A base image could not be made; the detail has the failing step and its output."""


@dataclass(frozen=True)
class BaseSpec:
    """What a base holds: the mmdebstrap variant, its packages, and its image config."""

    variant: str
    packages: tuple[str, ...]
    env: tuple[str, ...] = ()
    cmd: str = "/bin/sh"


_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The bases the generated Dockerfiles of ``detect`` start from.
BASES: Mapping[str, BaseSpec] = {
    "python": BaseSpec(
        "essential", ("python3", "python3-venv", "ca-certificates"), (_PATH,), "python3"
    ),
    "node": BaseSpec("essential", ("nodejs", "npm", "ca-certificates"), (_PATH,), "node"),
    "go": BaseSpec("essential", ("golang-go", "ca-certificates"), (_PATH,), "go"),
    # only the static busybox binary: a few MB, enough to serve files with busybox httpd
    "static": BaseSpec("extract", ("busybox-static",), ("PATH=/bin",), "/bin/busybox"),
}


def default_reference(name: str) -> str:
    """The platform's reference for base ``name``: ``localhost/zeitwork/<name>:bookworm``."""
    return f"{REPOSITORY}/{name}:{SUITE}"


def parse_overrides(text: str) -> dict[str, str]:
    """``"python=reg.example/py:3.12, node=..."`` as a mapping; ``InvalidInput`` if malformed."""
    overrides: dict[str, str] = {}
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, reference = item.partition("=")
        name, reference = name.strip(), reference.strip()
        if not sep or not _NAME.fullmatch(name) or not reference or " " in reference:
            raise InvalidInput(
                f"base image override {item!r} is not STACK=IMAGE (e.g. python=registry/py:3.12)"
            )
        if name not in BASES:
            raise InvalidInput(
                f"base image override for unknown stack {name!r} (known: {', '.join(BASES)})"
            )
        overrides[name] = reference
    return overrides


def reference(name: str, overrides: Mapping[str, str]) -> str:
    """The image a build of stack ``name`` starts from: the user's, else the platform's."""
    return overrides.get(name) or default_reference(name)


# ------------------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None

    def line(self) -> str:
        """One-line ``deb`` form, as mmdebstrap takes it for a mirror argument."""
        options = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}"


def apt_sources(paths: Sequence[Path] = APT_SOURCES, *, suite: str = SUITE) -> list[AptSource]:
    """The host's ``deb`` sources for ``suite`` and its companions (``-updates``,
    ``-security``), from one-line ``.list`` files and deb822 ``.sources`` files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources")))
        elif path.is_file():
            files.append(path)
    found: list[AptSource] = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        entries = _deb822(text) if file.suffix == ".sources" else _one_line(text)
        found.extend(e for e in entries if e.suite == suite or e.suite.startswith(suite + "-"))
    return list(dict.fromkeys(found))


def _one_line(text: str) -> Iterator[AptSource]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        signed_by = None
        rest = line[4:].strip()
        if rest.startswith("["):
            options, _, rest = rest[1:].partition("]")
            for option in options.split():
                key, _, value = option.partition("=")
                if key == "signed-by":
                    signed_by = value
        fields = rest.split()
        if len(fields) >= 2:
            yield AptSource(fields[0], fields[1], tuple(fields[2:]), signed_by)


def _deb822(text: str) -> Iterator[AptSource]:
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in paragraph.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1].isspace() and key is not None:
                fields[key] += "\n" + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        signed_by = fields.get("signed-by")
        if signed_by and ("\n" in signed_by or not signed_by.startswith("/")):
            signed_by = None  # an inline key: mmdebstrap finds the keyring itself
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield AptSource(uri, suite, components, signed_by)


# ------------------------------------------------------------------------------ ensure


@dataclass(frozen=True)
class Storage:
    """A buildah storage (vfs): its graph root and run root."""

    root: Path
    runroot: Path

    @classmethod
    def at(cls, root: Path) -> Storage:
        return cls(root=root, runroot=root.with_name(root.name + ".run"))

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]


def exists(name: str, storage: Storage) -> bool:
    """True when the base ``name`` is in ``storage`` already."""
    result = subprocess.run(
        storage.argv("inspect", "--type", "image", default_reference(name)),
        capture_output=True,
        timeout=_BUILDAH_TIMEOUT,
        check=False,
    )
    return result.returncode == 0


def ensure(
    name: str,
    storage_root: Path,
    *,
    sources: Sequence[AptSource] | None = None,
    runroot: Path | None = None,
) -> str:
    """Make the base ``name`` in the buildah storage at ``storage_root`` unless it is there.

    Returns its reference. Idempotent; concurrent callers (threads or processes) wait on a
    lock file and find the image the first one made. ``sources`` defaults to the host's apt
    sources for bookworm.
    """
    if name not in BASES:
        raise InvalidInput(f"no base image {name!r} (known: {', '.join(BASES)})")
    storage = Storage(storage_root, runroot) if runroot else Storage.at(storage_root)
    storage.root.mkdir(parents=True, exist_ok=True)
    with _locked(storage.root.with_name(f"{storage.root.name}.base-{name}.lock")):
        if not exists(name, storage):
            build(name, storage, sources=sources)
    return default_reference(name)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def copy_to(name: str, source: Storage, dest: Storage) -> str:
    """Put the base ``name`` (made in ``source`` by ``ensure``) into another buildah storage,
    e.g. a project's, unless it is there; returns its reference. Made once, copied cheaply:
    a project's builds then start from it without a registry."""
    ref = default_reference(name)
    dest.root.mkdir(parents=True, exist_ok=True)
    with _locked(dest.root.with_name(f"{dest.root.name}.base-{name}.lock")):
        if not exists(name, dest):
            target = f"containers-storage:[vfs@{dest.root}+{dest.runroot}]{ref}"
            _run("buildah push", source.argv("push", "--quiet", ref, target))
    return ref


def publish(
    name: str,
    storage: Storage,
    destination: str,
    *,
    tls_verify: bool = True,
    authfile: Path | None = None,
) -> str:
    """Push the base ``name`` to a registry as ``destination`` (``HOST/zeitwork/python:
    bookworm``), so builders elsewhere start from it; credentials come from ``authfile``
    (never on the command line). Returns ``destination``."""
    argv = ["push", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}"]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    argv += [default_reference(name), f"docker://{destination}"]
    _run("buildah push", storage.argv(*argv))
    return destination


def build(name: str, storage: Storage, *, sources: Sequence[AptSource] | None = None) -> float:
    """Make the base ``name`` (replacing an image of that name); returns the seconds taken."""
    spec = BASES[name]
    chosen = list(sources) if sources is not None else apt_sources()
    if not chosen:
        raise BaseImageError(
            f"no apt source for {SUITE} in /etc/apt/sources.list or sources.list.d: "
            f"the {name} base image is made from Debian {SUITE} packages"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"zeitwork-base-{name}-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        _run(
            "mmdebstrap",
            [
                "mmdebstrap",
                "--quiet",
                f"--variant={spec.variant}",
                f"--include={','.join(spec.packages)}",
                *(f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES),
                "--format=tar",
                SUITE,
                str(rootfs),
                *(source.line() for source in chosen),
            ],
            timeout=_MMDEBSTRAP_TIMEOUT,
        )
        container = _run("buildah from", storage.argv("from", "--quiet", "scratch")).strip()
        try:
            _run("buildah add", storage.argv("add", "--quiet", container, str(rootfs), "/"))
            config = ["config", "--cmd", spec.cmd, "--label", f"org.zeitwork.base={name}"]
            for env in spec.env:
                config += ["--env", env]
            _run("buildah config", storage.argv(*config, container))
            _run(
                "buildah commit",
                storage.argv("commit", "--quiet", "--rm", container, default_reference(name)),
            )
        except BaseException:
            subprocess.run(
                storage.argv("rm", container), capture_output=True, timeout=60, check=False
            )
            raise
    return time.monotonic() - started


def _run(step: str, argv: list[str], *, timeout: float = _BUILDAH_TIMEOUT) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise BaseImageError(f"{step}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise BaseImageError(f"{step} did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BaseImageError(f"{step} failed (exit {result.returncode}):\n{tail}")
    return result.stdout
