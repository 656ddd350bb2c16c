"""The install itself: the torch/torchvision pair works, and conda and pip agree."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names of the PyPI distributions where they differ
CONDA_NAMES = {"torch": "pytorch"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def split_requirement(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", text)
    assert match, f"cannot parse requirement {text!r}"
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    pairs = (split_requirement(r) for r in requirements)
    return {CONDA_NAMES.get(name, name): spec for name, spec in pairs}


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
            name, spec = split_requirement(stripped.removeprefix("  - "))
            conda[name] = spec
    return conda, pip


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    conda, pip = environment_requirements()
    expected = pyproject_requirements()
    extra = set(conda) - set(expected) - {"python", "pip"}
    assert not extra, f"environment.yml has {sorted(extra)} that pyproject.toml lacks"
    for name, spec in expected.items():
        assert name in conda, f"environment.yml lacks {name}{spec} from pyproject.toml"
        assert conda[name] == spec, f"{name}: environment.yml {conda[name]!r} != {spec!r}"
    assert pip == ["-e ."], "the pip section installs the project itself"


def test_python_bound_matches():
    conda, _ = environment_requirements()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] in conda["python"]


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
