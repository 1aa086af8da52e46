"""The lock file (constraints/lock.txt) that `make install` installs from.

It must pin every dependency of the package and of every extra `make install` asks for,
at versions inside pyproject.toml's ranges; torch is pinned apart, in constraints/torch-cpu.txt.
Regenerate it with `make lock` (see the Makefile).
"""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the lock is resolved for 3.11

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints" / "lock.txt"
TORCH_PIN = ROOT / "constraints" / "torch-cpu.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(path: Path) -> dict[str, Version]:
    found = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            found[canonicalize_name(match[1])] = Version(match[2])
    return found


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def makefile_extras() -> list[str]:
    match = re.search(r"^EXTRAS = (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile names the extras `make install` installs in EXTRAS ="
    return match[1].split(",")


def requirements() -> list[Requirement]:
    """The package's own dependencies and those of the extras `make install` installs."""
    extras = project()["optional-dependencies"]
    reqs = [Requirement(r) for r in project()["dependencies"]]
    return reqs + [Requirement(r) for extra in makefile_extras() for r in extras[extra]]


def test_make_install_asks_for_every_extra():
    assert sorted(makefile_extras()) == sorted(project()["optional-dependencies"])


def test_make_install_uses_the_lock_and_the_torch_pin():
    command = subprocess.run(["make", "-s", "-n", "install"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert "-c constraints/lock.txt" in command and "-c constraints/torch-cpu.txt" in command
    assert f".[{','.join(makefile_extras())}]" in command


def test_every_dependency_is_pinned_within_its_range():
    locked, torch = pins(LOCK), pins(TORCH_PIN)
    assert torch == {"torch": Version("2.13.0")}
    assert "torch" not in locked, "torch is pinned in constraints/torch-cpu.txt only"
    problems = []
    for req in requirements():
        name = canonicalize_name(req.name)
        version = torch.get(name) or locked.get(name)
        if version is None:
            problems.append(f"{req}: no pinned line")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: locked at {version}, outside the range")
    assert not problems, "constraints/lock.txt is stale (run `make lock`):\n" + "\n".join(problems)


def test_every_installed_transitive_dependency_is_pinned():
    """Walk the requirements of the installed distributions from the package down: every one
    installed here must be pinned (those not installed cannot be read, and are skipped)."""
    locked = set(pins(LOCK)) | {"torch"}
    seen, todo, unpinned = set(), [(req, "") for req in requirements()], []
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name not in locked:
            unpinned.append(str(req))
        if (name, tuple(sorted(req.extras))) in seen:
            continue
        seen.add((name, tuple(sorted(req.extras))))
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for child in requires:
            for child_extra in sorted(req.extras) or [""]:
                todo.append((Requirement(child), child_extra))
    assert not unpinned, "not pinned in constraints/lock.txt (run `make lock`): " + ", ".join(
        sorted(set(unpinned)))
