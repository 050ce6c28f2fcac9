"""Run a command under the kernel-level parts of a systemd unit's sandbox, without systemd.

Usage: python3 sandbox.py POLICY.json COMMAND [ARGS...]

Applies, in this order, what the unit asks for and a process can set on itself:
  NoNewPrivileges=yes          prctl(PR_SET_NO_NEW_PRIVS)
  MemoryDenyWriteExecute=yes   prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel refuses
                               the same writable+executable mappings as systemd's filter
  SystemCallArchitectures=native, SystemCallFilter= (an allow list), SystemCallErrorNumber=,
  RestrictAddressFamilies=, RestrictNamespaces=yes
                               one seccomp BPF filter built like systemd builds its filters:
                               other architectures and unlisted calls fail with the error
                               number; socket() with another family fails with EAFNOSUPPORT;
                               clone3 fails with ENOSYS (its flags cannot be inspected, so
                               libc falls back to clone); unshare, setns and clone with
                               CLONE_NEW* flags fail with EPERM
then execs COMMAND. Everything is inherited by the command's children.

The policy file is JSON: {"no_new_privs": bool, "mdwe": bool, "arch_native": bool,
"allow": [syscall numbers] or null, "errno": int, "families": [address families] or null,
"restrict_namespaces": bool, "nr": {"socket": n, "clone": n, "clone3": n, "unshare": n,
"setns": n}}. The test builds it from the installed unit (tests/integration/install/seccomp.py).

This file runs standalone (copied where the service user can read it), so it imports only
the standard library.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
from typing import Any

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SECCOMP_MODE_FILTER = 2

LD_W_ABS = 0x20
JEQ_K = 0x15
JSET_K = 0x45
RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97
CLONE_NEW_MASK = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME


def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def build(policy: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    errno = int(policy.get("errno") or EPERM)
    nr: dict[str, int] = policy["nr"]
    prog = []
    if policy.get("arch_native"):
        prog += [
            insn(LD_W_ABS, OFFSET_ARCH),
            insn(JEQ_K, AUDIT_ARCH_X86_64, jt=1, jf=0),
            insn(RET_K, RET_ERRNO | errno),
        ]
    prog.append(insn(LD_W_ABS, OFFSET_NR))
    families = policy.get("families")
    if families is not None:
        block = [insn(LD_W_ABS, OFFSET_ARG0)]
        for family in families:
            block += [insn(JEQ_K, int(family), jt=0, jf=1), insn(RET_K, RET_ALLOW)]
        block.append(insn(RET_K, RET_ERRNO | EAFNOSUPPORT))
        prog.append(insn(JEQ_K, nr["socket"], jt=0, jf=len(block)))
        prog += block
    if policy.get("restrict_namespaces"):
        prog += [insn(JEQ_K, nr["clone3"], jt=0, jf=1), insn(RET_K, RET_ERRNO | ENOSYS)]
        for name in ("unshare", "setns"):
            prog += [insn(JEQ_K, nr[name], jt=0, jf=1), insn(RET_K, RET_ERRNO | EPERM)]
        prog += [
            insn(JEQ_K, nr["clone"], jt=0, jf=4),
            insn(LD_W_ABS, OFFSET_ARG0),
            insn(JSET_K, CLONE_NEW_MASK, jt=0, jf=1),
            insn(RET_K, RET_ERRNO | EPERM),
            insn(RET_K, RET_ALLOW),
        ]
    allow = policy.get("allow")
    if allow is None:
        prog.append(insn(RET_K, RET_ALLOW))
    else:
        for number in allow:
            prog += [insn(JEQ_K, int(number), jt=0, jf=1), insn(RET_K, RET_ALLOW)]
        prog.append(insn(RET_K, RET_ERRNO | errno))
    return prog


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        policy = json.load(fh)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]

    def prctl(option: int, arg: int, arg2: int = 0) -> None:
        if libc.prctl(option, arg, arg2, 0, 0) != 0:
            sys.exit(f"sandbox: prctl({option}) failed: errno {ctypes.get_errno()}")

    if policy.get("no_new_privs"):
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    if policy.get("mdwe"):
        prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
    prog = build(policy)
    if len(prog) > 4096:
        sys.exit("sandbox: filter too long")
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
