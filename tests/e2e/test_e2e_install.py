"""The install steps in the header of examples/oaasd.service, run as written into a temporary root.

A sysadmin copies those lines one by one, so each must work on a fresh
Debian. Every step runs for real with its absolute paths moved under a
temporary root (``useradd`` gets ``--prefix`` on a copy of /etc's account
files), except three that cannot run on a test machine and are checked by
what they need instead: ``apt-get install`` (each package must be known to
apt), ``pip install .`` (the venv's pip must exist and ``.`` must be this
installable checkout; the test venv's oaasd stands in for the result) and
``systemctl`` (no systemd as PID 1: ``systemd-analyze verify`` of the
installed unit must pass with no output at all, as it only warns on unknown
keys).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "examples" / "oaasd.service"
MOVED = ("/etc/", "/opt/", "/var/")
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "login.defs")
CREATED = ("oaasd", "oaasd-task")


def header_steps(unit: Path = UNIT) -> list[list[str]]:
    """The commands of the header's install list (``a && b`` is two), ``sudo`` dropped."""
    steps, inside = [], False
    for line in unit.read_text().splitlines():
        if not line.startswith("#"):
            break
        inside = inside or "Install" in line
        text = line[1:].strip()
        if inside and line.startswith("#   ") and text.startswith("sudo "):
            words, step = shlex.split(text), []
            for word in [*words, "&&"]:
                if word == "&&":
                    steps.append(step[1:] if step[:1] == ["sudo"] else step)
                    step = []
                else:
                    step.append(word)
    return steps


def moved(arg: str, root: Path) -> str:
    return str(root) + arg if arg.startswith(MOVED) else arg


def account_ids(root: Path, argv: list[str]) -> list[str]:
    """``-o NAME`` / ``-g NAME`` as the ids the steps created in the temporary root."""
    users = {e.split(":")[0]: e.split(":")[2] for e in (root / "etc/passwd").read_text().splitlines()}
    groups = {e.split(":")[0]: e.split(":")[2] for e in (root / "etc/group").read_text().splitlines()}
    out = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-o", "-g"):
            out[i + 1] = (users if arg == "-o" else groups)[argv[i + 1]]
    return out


def run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"step {what!r} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout + proc.stderr


def check_packages(names: list[str]) -> None:
    if not shutil.which("apt-cache"):
        pytest.skip("no apt-cache here")
    for name in names:
        out = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True, text=True)
        assert out.returncode == 0 and f"Package: {name}" in out.stdout, f"apt knows no package {name}"


def stand_in_for_pip(root: Path, argv: list[str], what: str) -> None:
    pip = Path(moved(argv[0], root))
    assert pip.exists(), f"step {what!r}: {argv[0]} does not exist (no earlier step made the venv)"
    source = REPO / argv[-1]
    assert (source / "pyproject.toml").exists(), f"step {what!r}: {argv[-1]} is not an oaasd checkout"
    script = pip.parent / "oaasd"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m oaasd \"$@\"\n")
    script.chmod(0o755)


def verify_unit(root: Path) -> None:
    installed = root / "etc/systemd/system/oaasd.service"
    assert installed.exists(), "no step installed the unit into /etc/systemd/system"
    installed.write_text(installed.read_text().replace("/opt/oaasd/", f"{root}/opt/oaasd/"))
    proc = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def run_step(root: Path, argv: list[str]) -> None:
    """One header step, for real under ``root`` or checked by what it needs."""
    what = shlex.join(argv)
    name = Path(argv[0]).name
    if name == "apt-get":
        check_packages([a for a in argv[2:] if not a.startswith("-")])
    elif name == "useradd":
        run([*argv[:-1], "--prefix", str(root), argv[-1]], what)
    elif name == "pip":
        stand_in_for_pip(root, argv, what)
    elif name == "systemctl":
        if argv[1] == "enable":
            verify_unit(root)
    elif name == "python3":
        run([shutil.which("python3") or "/usr/bin/python3", *[moved(a, root) for a in argv[1:]]], what)
    else:
        run(account_ids(root, [moved(a, root) for a in argv]), what)


def test_header_steps_run_as_written(tmp_path):
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)  # present on any systemd machine
    for name in ACCOUNT_FILES:  # this machine's accounts, minus those the steps create (a fresh Debian)
        lines = Path(f"/etc/{name}").read_text().splitlines(keepends=True)
        (root / "etc" / name).write_text("".join(x for x in lines if x.split(":")[0] not in CREATED))
    steps = header_steps()
    assert [Path(s[0]).name for s in steps][-1] == "systemctl" and len(steps) >= 5
    for argv in steps:
        run_step(root, argv)
    accounts = {e.split(":")[0]: e.split(":") for e in (root / "etc/passwd").read_text().splitlines()}
    assert accounts["oaasd-task"][6] == "/usr/sbin/nologin" and int(accounts["oaasd-task"][2]) < 1000
    config = root / "etc/oaasd/oaasd.toml"
    assert config.exists() and oct(config.stat().st_mode & 0o777) == "0o640"
    assert (root / "opt/oaasd/bin/oaasd").exists()


def test_unit_names_the_task_account_and_gives_only_the_capabilities_it_needs():
    text = UNIT.read_text()
    assert "oaasd-task" in text
    # exactly what the daemon's start-up check asks of a non-root daemon that runs tasks as other accounts
    from oaasd.config import CAPS_NEEDED
    for key in ("CapabilityBoundingSet=", "AmbientCapabilities="):
        caps = [line for line in text.splitlines() if line.startswith(key)]
        assert len(caps) == 1 and set(caps[0][len(key):].split()) == set(CAPS_NEEDED), caps
