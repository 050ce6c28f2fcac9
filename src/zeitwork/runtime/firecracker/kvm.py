"""Can this host really run a KVM guest? A probe that runs one, instead of trusting that
``/dev/kvm`` opens.

The probe creates a VM with 2 MiB of memory and one vCPU, switched straight into 64-bit long
mode with identity-mapped paging, as Firecracker starts a Linux kernel; it puts a few
instructions at 0x1000 (an ``out`` to the serial port, a store to an address with no memory
behind it, which KVM's instruction emulator must decode, then ``hlt``), runs the vCPU and
checks that KVM reports the I/O exit, the MMIO exit and then the halt. Hosts whose KVM cannot
execute guests fail here with the reason KVM gives.

Passing is necessary, not sufficient: on these development machines this guest runs while a
Linux guest is known to hit a KVM emulation failure (the ``requires_kvm`` test would then fail
with the console output). x86_64 only; elsewhere it reports that it cannot tell.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import struct
from pathlib import Path

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_RUN = 0xAE80

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
_EXIT_NAMES = {
    0: "unknown",
    2: "io",
    5: "hlt",
    6: "mmio",
    8: "shutdown",
    9: "fail_entry",
    17: "internal_error",
}
_SUBERRORS = {1: "KVM emulation failure", 2: "simultaneous exceptions", 3: "delivery event"}
PORT = 0x3F8
MMIO_ADDRESS = 0x1F0000  # mapped by the page tables, outside the memory slot
# mov edx, 0x3f8 ; mov al, 'Z' ; out dx, al ; mov eax, 0x12345678 ; mov [0x1f0000], eax ; hlt
GUEST_CODE = b"\xba\xf8\x03\x00\x00\xb0\x5a\xee\xb8\x78\x56\x34\x12\x89\x04\x25\x00\x00\x1f\x00\xf4"
MEMORY = 0x200000  # guest-physical span the page tables map (one 2 MiB page)
SLOT = 0x100000  # the memory KVM backs; above it is MMIO
PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
CR0_LONG = 0x80050033  # PE MP ET NE WP AM PG
CR4_PAE = 1 << 5
EFER_LME_LMA = 0x500
_SEGMENT = struct.Struct("=QIH10B")  # struct kvm_segment (24 bytes)


def _segment(selector: int, type_: int, *, code: bool) -> bytes:
    # base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, padding
    return _SEGMENT.pack(
        0, 0xFFFFFFFF, selector, type_, 1, 0, 0 if code else 1, 1, 1 if code else 0, 1, 0, 0, 0
    )


def _long_mode_sregs(sregs: bytearray) -> None:
    code = _segment(1 << 3, 11, code=True)
    data = _segment(2 << 3, 3, code=False)
    sregs[0:24] = code  # cs
    for index in range(1, 6):  # ds es fs gs ss
        sregs[index * 24 : index * 24 + 24] = data
    struct.pack_into("=QQQQ", sregs, 224, CR0_LONG, 0, PML4, CR4_PAE)  # cr0 cr2 cr3 cr4
    struct.pack_into("=Q", sregs, 264, EFER_LME_LMA)  # efer


def probe_kvm(device: Path = Path("/dev/kvm")) -> tuple[bool, str]:
    """(True, detail) when a tiny guest runs to ``hlt`` on ``device``; else the reason."""
    if platform.machine() != "x86_64":
        return True, f"{device}: guest-execution probe is x86_64-only; not checked"
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"{device} cannot be opened: {exc.strerror}"
    fds = [kvm]
    maps: list[mmap.mmap] = []
    try:
        if fcntl.ioctl(kvm, KVM_GET_API_VERSION, 0) != 12:
            return False, "unexpected KVM API version"
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        fds.append(vm)
        memory = mmap.mmap(-1, MEMORY, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        maps.append(memory)
        memory[0x1000 : 0x1000 + len(GUEST_CODE)] = GUEST_CODE
        struct.pack_into("=Q", memory, PML4, PDPT | 0x3)  # present, writable
        struct.pack_into("=Q", memory, PDPT, PD | 0x3)
        struct.pack_into("=Q", memory, PD, 0x83)  # one 2 MiB page at 0
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        region = struct.pack("=IIQQQ", 0, 0, 0, SLOT, address)
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        run = mmap.mmap(vcpu, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        maps.append(run)
        sregs = bytearray(312)
        fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs, True)
        _long_mode_sregs(sregs)
        fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        struct.pack_into("=Q", regs, 48, SLOT)  # rsp
        struct.pack_into("=QQ", regs, 128, 0x1000, 0x2)  # rip, rflags
        fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
        seen: list[str] = []
        for _ in range(5):
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            (reason,) = struct.unpack_from("=I", run, 8)
            if reason == KVM_EXIT_IO:
                direction, _size, port = struct.unpack_from("=BBH", run, 32)
                if port == PORT and direction == 1:
                    seen.append("io")
                continue
            if reason == KVM_EXIT_MMIO:
                phys, data, length, is_write = struct.unpack_from("=Q8sIB", run, 32)
                if (phys, data[:length], is_write) == (MMIO_ADDRESS, b"\x78\x56\x34\x12", 1):
                    seen.append("mmio")
                continue
            if reason == KVM_EXIT_HLT and seen == ["io", "mmio"]:
                return True, f"{device}: a test guest ran to hlt"
            name = _EXIT_NAMES.get(reason, str(reason))
            if reason == 17:
                (suberror,) = struct.unpack_from("=I", run, 32)
                return False, _SUBERRORS.get(suberror, f"KVM internal error {suberror}")
            return False, f"the KVM test guest stopped with exit reason {name}"
        return False, "the KVM test guest did not halt"
    except OSError as exc:
        return False, f"KVM refused the test guest: {exc.strerror or exc}"
    finally:
        for region_map in maps:
            region_map.close()
        for fd in reversed(fds):
            os.close(fd)
