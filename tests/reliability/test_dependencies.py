"""Dependencies: every requirement in ``pyproject.toml`` has a lower and an upper bound, the
installed versions (what CI tests) satisfy them, and the install steps (``Makefile``, ``.ci/``)
fetch only from the package registry: no URLs, VCS links, extra indexes or find-links."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIRED = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs]
          for name, reqs in PROJECT["optional-dependencies"].items()}
LOWER, UPPER = {">=", ">", "==", "~="}, {"<", "<=", "==", "~="}


@pytest.mark.parametrize("req", [*REQUIRED, *[r for rs in EXTRAS.values() for r in rs]],
                         ids=str)
def test_every_requirement_has_both_bounds(req):
    ops = {s.operator for s in req.specifier}
    assert ops & LOWER and ops & UPPER, f"{req} needs a lower and an upper bound"
    assert req.url is None, f"{req} must come from the package registry"


@pytest.mark.parametrize("req", [*REQUIRED, *EXTRAS["test"]], ids=str)
def test_installed_versions_satisfy_the_bounds(req):
    installed = Version(md.version(req.name))
    assert req.specifier.contains(installed, prereleases=True), \
        f"{req.name} {installed} is outside {req.specifier}"


def _install_lines() -> list[str]:
    files = [ROOT / "Makefile", *sorted((ROOT / ".ci").glob("*"))]
    return [line.strip() for f in files if f.is_file()
            for line in f.read_text().splitlines() if re.search(r"pip3? install", line)]


def test_install_steps_use_only_the_registry():
    lines = _install_lines()
    assert lines, "no pip install step found"
    bad = re.compile(r"https?://|git\+|--index-url|--extra-index-url|--find-links|\s-f\s|\s-i\s")
    assert [ln for ln in lines if bad.search(ln)] == []


def test_pins_in_install_steps_are_within_the_bounds():
    """``pip install torch==2.13.0`` in the Makefile must satisfy pyproject's torch range."""
    declared = {r.name: r for r in REQUIRED}
    pins = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.+]*)", " ".join(_install_lines()))
    assert pins
    for name, version in pins:
        assert name in declared and declared[name].specifier.contains(version), (name, version)
