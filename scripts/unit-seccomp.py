#!/usr/bin/python3
"""Run a command under the system-call restrictions of systemd/municipal-gateway.service, without systemd.

systemd is not init on the development and CI machines, so the unit's seccomp settings cannot be tried
there the real way. This installs the same kind of filters systemd 252 would, then execs the command:

  SystemCallFilter=@system-service, ~@privileged @resources, then adjtimex/clock_adjtime allowed again (and the groups
  ProtectKernelModules=, ProtectKernelLogs= remove), SystemCallErrorNumber=EPERM;
  MemoryDenyWriteExecute=yes: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC and
  shmat with SHM_EXEC fail with EPERM;
  RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6: socket() of any other family fails (EAFNOSUPPORT).

Groups are read from `systemd-analyze syscall-filter`, so they are this systemd's. Not copied: the file
system, namespace, device and personality settings. Needs Debian's python3-seccomp:

    sudo apt-get install python3-seccomp
    ./scripts/unit-seccomp.py .venv/bin/municipal-gateway demo --seconds 20   # Debian's /usr/bin/python3
"""

import errno
import os
import subprocess
import sys

import seccomp  # Debian: python3-seccomp (libseccomp's own bindings)

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
ALLOWED_FAMILIES = {1, 2, 10}  # AF_UNIX, AF_INET, AF_INET6
# ~@privileged ~@resources from the unit, plus what ProtectKernelModules= (@module) and ProtectKernelLogs=
# (syslog) take away; then the unit's last SystemCallFilter= line allows adjtimex and clock_adjtime again (to read the clock's
# synchronisation state; changing the clock needs CAP_SYS_TIME, which the unit does not have).
DENIED_GROUPS = ("@privileged", "@resources", "@module")
DENIED_CALLS = {"syslog"}
ALLOWED_AGAIN = {"adjtimex", "clock_adjtime", "clock_adjtime64"}


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(groups: dict[str, list[str]], name: str) -> set[str]:
    calls: set[str] = set()
    for item in groups[name]:
        calls |= expand(groups, item) if item.startswith("@") else {item}
    return calls


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    groups = syscall_groups()
    allowed = expand(groups, "@system-service") - DENIED_CALLS
    for group in DENIED_GROUPS:
        allowed -= expand(groups, group)
    allowed |= ALLOWED_AGAIN

    # Loaded first: once the allow list is in place, loading another filter may itself be refused.
    wx = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    wx.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE))
    wx.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    wx.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
    wx.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    for family in set(range(64)) - ALLOWED_FAMILIES:
        wx.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    wx.load()

    allow_list = seccomp.SyscallFilter(defaction=eperm)
    count = 0
    for name in sorted(allowed):
        try:
            allow_list.add_rule(seccomp.ALLOW, name)
            count += 1
        except (RuntimeError, ValueError, OSError):
            pass  # a call of the group that this architecture does not have
    allow_list.load()
    print(f"unit-seccomp: {count} system calls allowed, W^X memory and address families restricted", file=sys.stderr)
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
