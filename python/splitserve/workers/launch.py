"""The exec shim every worker starts as: confine the process, then exec the real server.

    python -I -S launch.py --parent-pid PID --cpus 0,1 [--cwd DIR] [--memory-limit BYTES]
                           [--user UID:GID:GROUP,...] -- PROGRAM [ARG ...]

The gateway spawns workers with `os.posix_spawn` (`process.spawn_worker`): no code of the
gateway's runs between fork and exec, which is unsafe while other threads run (the capture
writer, the database's), since the child may deadlock on a lock some thread held at the fork.
The child, a new session and process group, execs this script at once, and the confinement
happens here, in a fresh single-threaded interpreter, before the server is exec'd in the same
process (same pid):

0. close every descriptor but stdin, stdout and stderr (one a C library opened without
   close-on-exec must not reach the model server), and change to `--cwd`;

1. with `--user`: drop to the worker user (supplementary groups, gid, uid; real, effective and
   saved ids, so there is no way back);
2. `PR_SET_NO_NEW_PRIVS`: no set-user-ID program or file capability can give privileges back;
3. `PR_SET_PDEATHSIG` SIGKILL: die with the gateway. After the credential change, since the kernel
   clears the parent-death signal on one;
4. check that the parent is still the gateway that spawned us (`--parent-pid`): if it died before
   step 3, nobody would ever stop us, so exit;
5. pin to the CPU set (`sched_setaffinity`) and cap the address space (`RLIMIT_AS`);
6. exec PROGRAM, looked up on the PATH of the worker's environment.

It imports only the standard library (it runs with `-I -S`: nothing from the worker's environment,
such as PYTHONPATH or PYTHONSTARTUP, reaches it). A failure prints one line to stderr and exits
with EXIT_SETUP_FAILED, or EXIT_EXEC_FAILED when the program cannot be executed.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections.abc import Sequence

#: linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

#: The exit status when confining the process failed (or its parent is already gone).
EXIT_SETUP_FAILED = 126

#: The exit status when the server's program cannot be executed (as a shell reports it).
EXIT_EXEC_FAILED = 127

_PREFIX = "splitserve.workers.launch"


class LaunchError(Exception):
    """The command line is malformed, or a confinement step failed."""


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise LaunchError(f"prctl({option}): {os.strerror(error)}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise LaunchError(f"{what}: {text!r} is not a comma-separated list of integers") from None


def parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split the shim's options from the program's argv (after `--`).

    Raises:
        LaunchError: an unknown option, an option without a value, or no program.
    """
    options: dict[str, str] = {}
    known = {"--parent-pid", "--cpus", "--cwd", "--memory-limit", "--user"}
    index = 0
    while index < len(argv) and argv[index] != "--":
        name = argv[index]
        if name not in known or index + 1 >= len(argv):
            raise LaunchError(f"unknown option or missing value: {name!r}")
        options[name] = argv[index + 1]
        index += 2
    program = list(argv[index + 1 :])
    if not program or "--parent-pid" not in options or "--cpus" not in options:
        raise LaunchError("usage: launch.py --parent-pid PID --cpus LIST [...] -- PROGRAM ...")
    return options, program


def confine(options: dict[str, str]) -> None:
    """Steps 0 to 5 of the module docstring.

    Raises:
        LaunchError: a step failed, or the parent is no longer the gateway.
    """
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    cwd = options.get("--cwd")
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as error:
            raise LaunchError(f"could not enter the working directory {cwd}: {error}") from None
    user = options.get("--user")
    try:
        if user is not None:
            uid_text, gid_text, groups_text = [*user.split(":"), "", ""][:3]
            uid, gid = int(uid_text), int(gid_text)
            os.setgroups(_int_list(groups_text, "--user groups") or [gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
                raise LaunchError(f"could not switch to uid {uid}, gid {gid}")
    except (OSError, ValueError) as error:
        raise LaunchError(f"could not switch to the worker user ({user}): {error}") from None
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(options["--parent-pid"]):
        raise LaunchError("the gateway exited before the worker started")
    try:
        os.sched_setaffinity(0, _int_list(options["--cpus"], "--cpus"))
        limit = options.get("--memory-limit")
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    except (OSError, ValueError) as error:
        raise LaunchError(f"could not pin or cap the worker: {error}") from None


def main(argv: Sequence[str]) -> int:
    """Confine this process and exec the program; returns only on failure (the exit status)."""
    try:
        options, program = parse(argv)
        confine(options)
    except LaunchError as error:
        print(f"{_PREFIX}: {error}", file=sys.stderr, flush=True)
        return EXIT_SETUP_FAILED
    try:
        os.execvp(program[0], program)
    except OSError as error:
        print(
            f"{_PREFIX}: could not start the model server {program[0]!r}:"
            f" {error.strerror or error}",
            file=sys.stderr,
            flush=True,
        )
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
