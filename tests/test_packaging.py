"""The lock agrees with pyproject.toml, and a wheel of the project carries no path of the machine that built it."""

import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, Version]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"not pinned exactly: {line}"
            pins[_norm(req.name)] = Version(spec.version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def unsatisfied(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    return [
        str(r)
        for r in requirements
        if _norm(r.name) not in pins or not r.specifier.contains(pins[_norm(r.name)], prereleases=True)
    ]


def test_every_requirement_of_pyproject_is_pinned_in_the_lock():
    """Fast, offline half of `scripts/lock.sh --check` (which .ci/run runs): a requirement added to or tightened in
    pyproject.toml without refreshing the lock fails here."""
    pins = lock_pins(LOCK.read_text())
    assert unsatisfied(project_requirements(), pins) == []
    # the check can fail: a requirement the lock does not satisfy, and one it lacks
    assert unsatisfied([Requirement("torch>=99"), Requirement("no-such-package")], pins) == [
        "torch>=99",
        "no-such-package",
    ]


def test_lock_pins_the_pair_that_imports_and_the_local_sklearn_shim():
    text = LOCK.read_text()
    pins = lock_pins(text)
    assert (str(pins["torch"]), str(pins["torchvision"])) == ("2.14.1", "0.29.1")
    assert str(pins["sklearn"]) == "0.0.post12+shim"  # a local version: no index serves it, only find-links
    assert "--find-links third_party/wheels" in text.splitlines()
    assert (ROOT / "third_party" / "wheels" / "sklearn-0.0.post12+shim-py3-none-any.whl").exists()
    assert "file:/" not in text and "/opt/" not in text and str(ROOT) not in text


@pytest.mark.timeout(300)
def test_wheel_metadata_has_no_path_of_the_build_machine(tmp_path):
    # with hatchling installed (the test extra) nothing is fetched; otherwise pip builds in isolation
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("mlsys_repro-*.whl")
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = z.read(meta_name).decode()
        names = z.namelist()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if "file:" in r or " @ " in r]
    assert "file:" not in meta and str(ROOT) not in meta
    assert "common/data_files/rotten_tomatoes_corpus.csv.bz2" in names  # the data ships in the wheel
