"""The install itself: the ranges, the locks and the extras agree, and conda and pip agree."""

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
# conda-forge's names for the PyPI distributions where they differ (docs/installs.md, "Conda")
CONDA_NAMES = {"torch": "pytorch"}
MAINTAINER_TOOLS = {"nbval", "playwright", "pytest", "pytest-timeout", "ruff"}
INSTRUCTOR_TOOLS = {"nbformat", "nbconvert", "nbclient"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    """The project's own requirements, or one extra's with the extras it names expanded."""
    extras = project()["optional-dependencies"]
    listed = project()["dependencies"] if extra is None else extras[extra]
    found = {}
    for text in listed:
        requirement = Requirement(text)
        if canonical(requirement.name) == "metalib":
            for inner in requirement.extras:
                found |= requirements(inner)
        else:
            found[canonical(requirement.name)] = requirement
    return found


def pins(path: Path) -> dict[str, Version]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, separator, version = line.partition("==")
            assert separator, f"{path.name}: {line!r} is not an exact pin (name==version)"
            found[canonical(name)] = Version(version)
    return found


def lower_bound(requirement: Requirement) -> Version:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{requirement} has no single lower bound (>=)"
    return bounds[0]


def test_extras_are_split_by_who_needs_them():
    readers, instructors = requirements("readers"), requirements("instructors")
    maintainers = requirements("maintainers")
    assert not set(readers) & (MAINTAINER_TOOLS | INSTRUCTOR_TOOLS), "readers get no tools"
    assert set(readers) < set(instructors) and not set(instructors) & MAINTAINER_TOOLS
    assert INSTRUCTOR_TOOLS <= set(instructors) and set(instructors) < set(maintainers)
    assert MAINTAINER_TOOLS <= set(maintainers)


def test_make_lab_installs_the_readers_extra_only():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab: \$\(READERS\)$", makefile, re.M), "make lab installs readers"
    assert re.search(r"^READERS := \$\(VENV\)/\.metalib-readers$", makefile, re.M)
    assert re.search(r'pip install \$\(if \$\(LOCK\),-c \$\(LOCK\),\) -e "\.\[\$\*\]"', makefile)
    assert re.search(r"^test: \$\(MAINTAINERS\)$", makefile, re.M)


def test_floors_are_the_lower_bounds_and_the_oldest_lock_has_them():
    floors = pins(REQUIREMENTS / "floors.txt")
    core = requirements()
    assert set(floors) == set(core), "one floor per dependency of the project"
    oldest = pins(REQUIREMENTS / "lock-oldest.txt")
    for name, requirement in core.items():
        assert lower_bound(requirement) == floors[name], f"{requirement} vs floor {floors[name]}"
        assert oldest[name] == floors[name], f"lock-oldest.txt has {name} {oldest[name]}"


@pytest.mark.parametrize("lock", ["lock.txt", "lock-oldest.txt"])
def test_each_lock_satisfies_every_range(lock):
    locked = pins(REQUIREMENTS / lock)
    for extra in (None, "maintainers"):
        for name, requirement in requirements(extra).items():
            assert name in locked, f"{lock} lacks {name}"
            version = locked[name]
            assert version in requirement.specifier, f"{lock}: {name} {version} ∉ {requirement}"
    assert "metalib" not in locked, "the project itself is installed from the checkout"


def test_the_installed_dependencies_are_in_range():
    for name, requirement in requirements().items():
        installed = Version(metadata.version(name))
        assert installed in requirement.specifier, f"{name} {installed} is outside {requirement}"


def environment_requirements() -> tuple[dict[str, str], list[str]]:
    conda, pip, section = {}, [], None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped:
            continue
        if not stripped.startswith(" "):
            section = stripped.rstrip(":")
            continue
        if section != "dependencies":
            continue
        if stripped.startswith("      - "):
            pip.append(stripped.removeprefix("      - "))
        elif stripped.startswith("  - ") and stripped != "  - pip:":
            requirement = Requirement(stripped.removeprefix("  - "))
            conda[canonical(requirement.name)] = str(requirement.specifier)
    return conda, pip


def test_environment_yml_has_the_readers_set_under_conda_forge_names():
    conda, pip = environment_requirements()
    expected = {
        CONDA_NAMES.get(name, name): str(requirement.specifier)
        for name, requirement in (requirements() | requirements("readers")).items()
    }
    assert set(conda) - {"python", "pip"} == set(expected), (
        f"environment.yml lists {sorted(set(conda) - {'python', 'pip'})}, "
        f"the readers' set is {sorted(expected)}"
    )
    for name, spec in expected.items():
        assert conda[name] == spec, f"{name}: environment.yml {conda[name]!r} != {spec!r}"
    assert pip == ["-e ."], "the pip section installs the project itself"


def test_python_bound_matches():
    conda, _ = environment_requirements()
    assert project()["requires-python"] in conda["python"]


def test_torchvision_imports_and_runs_its_compiled_ops():
    import torch
    import torchvision
    from torchvision.ops import nms
    from torchvision.transforms import functional as TF

    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    tv_major, tv_minor = (int(v) for v in torchvision.__version__.split(".")[:2])
    assert (tv_major, tv_minor) == (0, minor + 15) and major == 2, (
        f"torch {torch.__version__} and torchvision {torchvision.__version__} are not a pair"
    )
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    image = torch.zeros(1, 105, 105)
    image[:, 40:60, 40:60] = 1.0
    small = TF.resize(image, [28, 28], antialias=True)
    assert small.shape == (1, 28, 28) and 0 < small.mean() < 1
