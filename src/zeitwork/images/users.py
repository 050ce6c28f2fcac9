"""Resolve an image's ``User`` (``name``, ``uid``, ``uid:gid``, ``name:group``, ...) against
the image's own ``/etc/passwd`` and ``/etc/group``, as runc and Docker do. Pure: the caller
reads the files (``tree.read_confined``) and passes their text.
"""

from __future__ import annotations

from dataclasses import dataclass

from zeitwork.core.errors import InvalidInput

_MAX_ID = 2**32 - 2


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """Numeric identity for the container process; ``name`` is None for a bare uid."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    name: str | None = None
    home: str = "/"

    @property
    def spec(self) -> str:
        """``"uid:gid"``, the form ``runtime.ProcessSpec.user`` takes."""
        return f"{self.uid}:{self.gid}"


def _as_id(text: str) -> int | None:
    if not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; comments and malformed lines are skipped (as libc does)."""
    entries = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 4:
            continue
        uid, gid = _as_id(fields[2]), _as_id(fields[3])
        if not fields[0] or uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 3:
            continue
        gid = _as_id(fields[2])
        if not fields[0] or gid is None:
            continue
        members = tuple(m for m in (fields[3].split(",") if len(fields) > 3 else []) if m)
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(spec: str, *, passwd: str = "", group: str = "") -> ResolvedUser:
    """Resolve an OCI ``User`` value.

    - ``""``: root (uid 0, gid 0).
    - ``name`` or ``uid``: looked up in passwd (a name must exist; a numeric uid that is not
      there runs with gid 0); the primary gid comes from passwd.
    - ``user:group``: each part a name or a number; a group name must exist in /etc/group.
    - Supplementary gids: every group in /etc/group that lists the user's name as a member.

    Raises ``InvalidInput`` naming what is missing.
    """
    users = parse_passwd(passwd)
    groups = parse_group(group)
    user_part, has_group, group_part = spec.strip().partition(":")
    if has_group and not group_part:
        raise InvalidInput(f"image user {spec!r}: empty group")

    entry: PasswdEntry | None = None
    if not user_part:
        uid = 0
        entry = next((u for u in users if u.uid == 0), None)
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            numeric = _as_id(user_part)
            if numeric is None:
                raise InvalidInput(f"image user {user_part!r} is not in the image's /etc/passwd")
            entry = next((u for u in users if u.uid == numeric), None)
            uid = numeric
        else:
            uid = entry.uid
    gid = entry.gid if entry is not None else 0

    if group_part:
        found = next((g for g in groups if g.name == group_part), None)
        if found is not None:
            gid = found.gid
        else:
            numeric = _as_id(group_part)
            if numeric is None:
                raise InvalidInput(f"image group {group_part!r} is not in the image's /etc/group")
            gid = numeric

    extra: set[int] = set()
    if entry is not None:
        extra = {g.gid for g in groups if entry.name in g.members}
    extra.discard(gid)
    return ResolvedUser(
        uid=uid,
        gid=gid,
        additional_gids=tuple(sorted(extra)),
        name=entry.name if entry is not None else None,
        home=entry.home if entry is not None else "/",
    )
