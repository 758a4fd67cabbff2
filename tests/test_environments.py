"""The pinned environments agree with each other and with pyproject's supported ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def _supported_ranges() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for group in project["optional-dependencies"].values() for text in group]
    requirements += [Requirement(text) for text in project["dependencies"]]
    return {requirement.name.lower(): requirement for requirement in requirements}


def test_serving_image_pins_what_the_tests_run():
    spec = yaml.safe_load((ROOT / "environments" / "serving-cpu.yml").read_text())
    pip_lines = next(item["pip"] for item in spec["dependencies"] if isinstance(item, dict))
    image = _pins_from_lines(pip_lines)
    tested = _pins(ROOT / "environments" / "constraints-dev.txt")
    assert image, "the serving spec pins its packages"
    for name, version in image.items():
        assert tested.get(name) == version, f"{name}: image {version}, tests {tested.get(name)}"


def _pins_from_lines(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_both_tested_stacks_lie_inside_the_supported_ranges():
    ranges = _supported_ranges()
    for constraints in ("constraints-dev.txt", "constraints-oldest.txt"):
        pins = _pins(ROOT / "environments" / constraints)
        for name in ("torch", "transformers", "diffusers", "azureml-inference-server-http", "pydantic"):
            assert Version(pins[name]) in ranges[name].specifier, f"{constraints}: {name} {pins[name]}"


def test_oldest_stack_is_the_lower_end_of_each_range():
    ranges = _supported_ranges()
    oldest = _pins(ROOT / "environments" / "constraints-oldest.txt")
    for name in ("transformers", "diffusers"):
        lower = next(spec.version for spec in ranges[name].specifier if spec.operator == ">=")
        assert Version(oldest[name]) == Version(lower), name


def test_serving_image_build_contexts_pin_what_the_tests_run(tmp_path):
    """The Docker build contexts of mii_azure.serving_image: each pin is the tested version, except
    the GPU-only packages a CPU test stack cannot hold (serving_image.GPU_ONLY_PINS, cuda-toolkit)."""
    from mii_azure.serving_image import DEEPSPEED_VERSION, GPU_ONLY_PINS, write_build_context

    tested = _pins(ROOT / "environments" / "constraints-dev.txt")
    write_build_context(tmp_path / "gpu", gpu=True, cuda_arch_list=["8.0"])
    write_build_context(tmp_path / "cpu", gpu=False)
    for kind in ("gpu", "cpu"):
        image = {
            name: version.removesuffix("+cpu")
            for name, version in _pins(tmp_path / kind / "requirements.txt").items()
            if name not in GPU_ONLY_PINS
        }
        assert image and "torch" in image, kind
        for name, version in image.items():
            assert tested.get(name) == version, f"{kind} image: {name} {version}, tests {tested.get(name)}"
    for name in GPU_ONLY_PINS:
        assert name not in tested, f"{name} is tested now: pin it with the others in serving_image.SERVING_PINS"
    assert DEEPSPEED_VERSION == tested["deepspeed"]
    assert f"deepspeed=={tested['deepspeed']}" in (tmp_path / "gpu" / "Dockerfile").read_text()
