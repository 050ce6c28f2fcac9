"""User resolution against an image's /etc/passwd and /etc/group."""

from __future__ import annotations

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images import ResolvedUser, resolve_user
from zeitwork.images.users import parse_group, parse_passwd

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:app:/home/app:/bin/sh
broken line
web:x:33:33::/var/www:/bin/sh
nohome:x:2000:2000:::/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
app:x:1000:
staff:x:50:app,web
audio:x:29:app
web:x:33:
"""


def resolve(spec: str) -> ResolvedUser:
    return resolve_user(spec, passwd=PASSWD, group=GROUP)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ResolvedUser(0, 0, (), "root", "/root")),
        ("root", ResolvedUser(0, 0, (), "root", "/root")),
        ("app", ResolvedUser(1000, 1000, (29, 50), "app", "/home/app")),
        ("1000", ResolvedUser(1000, 1000, (29, 50), "app", "/home/app")),
        ("app:staff", ResolvedUser(1000, 50, (29,), "app", "/home/app")),
        ("app:33", ResolvedUser(1000, 33, (29, 50), "app", "/home/app")),
        ("1000:1000", ResolvedUser(1000, 1000, (29, 50), "app", "/home/app")),
        ("web", ResolvedUser(33, 33, (50,), "web", "/var/www")),
        ("nohome", ResolvedUser(2000, 2000, (), "nohome", "/")),
        # a numeric uid that is not in passwd runs with gid 0 (as Docker does)
        ("4242", ResolvedUser(4242, 0, (), None, "/")),
        ("4242:4343", ResolvedUser(4242, 4343, (), None, "/")),
        (" app ", ResolvedUser(1000, 1000, (29, 50), "app", "/home/app")),
    ],
)
def test_resolve(spec: str, expected: ResolvedUser):
    assert resolve(spec) == expected


def test_spec_form():
    assert resolve("app:staff").spec == "1000:50"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nobody", "'nobody' is not in the image's /etc/passwd"),
        ("app:nogroup", "'nogroup' is not in the image's /etc/group"),
        ("app:", "empty group"),
        ("99999999999", "not in the image's /etc/passwd"),
        ("-1", "not in the image's /etc/passwd"),
    ],
)
def test_unresolvable(spec: str, message: str):
    with pytest.raises(InvalidInput) as info:
        resolve(spec)
    assert message in info.value.detail


def test_no_passwd_file():
    assert resolve_user("", passwd="", group="") == ResolvedUser(0, 0)
    assert resolve_user("123:456") == ResolvedUser(123, 456)
    with pytest.raises(InvalidInput):
        resolve_user("app")


def test_parsers_skip_garbage():
    users = parse_passwd(PASSWD + "x:y:notanumber:1:::\n::1:1:::\n")
    assert [u.name for u in users] == ["root", "daemon", "app", "web", "nohome"]
    groups = parse_group(GROUP + "bad:x:zz:\n")
    assert [g.name for g in groups] == ["root", "daemon", "app", "staff", "audio", "web"]
    assert groups[3].members == ("app", "web")
