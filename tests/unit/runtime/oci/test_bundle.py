from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.base import InstanceSpec, NetworkAttachment, ProcessSpec
from zeitwork.runtime.oci import bundle

ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _spec(**overrides: object) -> InstanceSpec:
    values: dict[str, object] = {
        "instance_id": ID,
        "image_digest": "sha256:" + "a" * 64,
        "rootfs": Path("/images/a"),
        "process": ProcessSpec(
            argv=["/app", "--port", "80"], env={"A": "1"}, cwd="/srv", user="1000:100"
        ),
        "vcpu": 0.5,
        "memory_mib": 128,
        "port": 80,
        "network": NetworkAttachment(
            bridge="zwbr0", address="10.88.0.2", prefix_len=24, gateway="10.88.0.1", netns="/ns/x"
        ),
        "pids_limit": 256,
    }
    values.update(overrides)
    return InstanceSpec(**values)  # type: ignore[arg-type]


def _config(**overrides: object) -> dict[str, object]:
    return bundle.build_config(
        _spec(**overrides), netns_path="/ns/x", cgroups_path="/zeitwork/zw-1"
    )


def test_process_runs_the_image_command_as_the_image_user() -> None:
    process = _config()["process"]
    assert isinstance(process, dict)
    assert process["args"] == ["/app", "--port", "80"]
    assert process["user"] == {"uid": 1000, "gid": 100}
    assert process["cwd"] == "/srv"
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    env = process["env"]
    assert "A=1" in env
    assert any(item.startswith("PATH=") for item in env)


def test_instance_env_path_wins_over_the_default() -> None:
    spec = _spec(process=ProcessSpec(argv=["x"], env={"PATH": "/opt/bin"}, user="0:0"))
    config = bundle.build_config(spec, netns_path="/n", cgroups_path="/c")
    assert "PATH=/opt/bin" in config["process"]["env"]
    assert "HOME=/root" in config["process"]["env"]


def test_only_minimal_capabilities() -> None:
    caps = _config()["process"]["capabilities"]  # type: ignore[index]
    for kind in ("bounding", "effective", "permitted"):
        assert sorted(caps[kind]) == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert caps["inheritable"] == ["CAP_NET_BIND_SERVICE"]  # what ambient needs
    assert caps["ambient"] == ["CAP_NET_BIND_SERVICE"]


def test_namespaces_use_the_prepared_network_namespace() -> None:
    namespaces = _config()["linux"]["namespaces"]  # type: ignore[index]
    assert {"type": "network", "path": "/ns/x"} in namespaces
    assert {n["type"] for n in namespaces} == {"pid", "ipc", "uts", "mount", "network"}


@pytest.mark.parametrize(
    ("vcpu", "quota"), [(0.5, 50_000), (2, 200_000), (0.001, 1_000), (0.25, 25_000)]
)
def test_limits_from_resources(vcpu: float, quota: int) -> None:
    resources = _config(vcpu=vcpu)["linux"]["resources"]  # type: ignore[index]
    assert resources["cpu"] == {"quota": quota, "period": 100_000}
    assert resources["memory"] == {"limit": 128 * 1024 * 1024, "swap": 128 * 1024 * 1024}
    assert resources["pids"] == {"limit": 256}


def test_rootfs_is_writable_overlay_mountpoint_and_identity_is_annotated() -> None:
    config = _config()
    assert config["root"] == {"path": "rootfs", "readonly": False}
    assert config["annotations"]["io.zeitwork.instance"] == str(ID)  # type: ignore[index]
    assert config["linux"]["cgroupsPath"] == "/zeitwork/zw-1"  # type: ignore[index]
    assert config["hostname"] == "zw-123456781234"


def test_pure_same_input_same_output() -> None:
    assert _config() == _config()


@pytest.mark.parametrize("user", ["app", "1:x", "-1:0", ""])
def test_bad_users_are_refused(user: str) -> None:
    with pytest.raises(InvalidInput):
        _config(process=ProcessSpec(argv=["x"], env={}, user=user))


def test_empty_command_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no entrypoint"):
        _config(process=ProcessSpec(argv=[], env={}))


def test_resolv_and_hosts_are_read_only_binds() -> None:
    config = bundle.build_config(
        _spec(), netns_path="/n", cgroups_path="/c", resolv_conf="/d/resolv.conf", hosts="/d/hosts"
    )
    binds = {m["destination"]: m for m in config["mounts"] if m["type"] == "bind"}
    assert binds["/etc/resolv.conf"]["source"] == "/d/resolv.conf"
    assert "ro" in binds["/etc/hosts"]["options"]


def test_seccomp_denies_kernel_surface_and_namespace_creation() -> None:
    profile = _config()["linux"]["seccomp"]  # type: ignore[index]
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = profile["syscalls"][0]
    assert denied["action"] == "SCMP_ACT_ERRNO" and denied["errnoRet"] == 1
    for name in ("mount", "unshare", "setns", "bpf", "kexec_load", "init_module", "keyctl"):
        assert name in denied["names"]
    for allowed in ("read", "write", "clone", "execve", "ptrace", "socket"):
        assert allowed not in denied["names"]
    clone_rules = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    masks = {rule["args"][0]["value"] for rule in clone_rules}
    assert 0x10000000 in masks and 0x40000000 in masks  # CLONE_NEWUSER, CLONE_NEWNET
    assert all(rule["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for rule in clone_rules)
    clone3 = next(r for r in profile["syscalls"] if r["names"] == ["clone3"])
    assert clone3["errnoRet"] == 38  # ENOSYS: libc falls back to clone()
