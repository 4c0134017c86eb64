"""Every sub-package of offmarl/ must be listed in pyproject.toml, or a wheel install misses it."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "offmarl").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"add to [tool.setuptools].packages: {sorted(found - listed)}"


def test_never_depends_on_pypi_smac():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = cfg["project"]["dependencies"]
    assert not any(d.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip() == "smac" for d in deps)


def test_ci_runs_exactly_the_readme_commands():
    """.ci/run must run what a user is told to run: the README's install, lint and test commands."""
    readme = (ROOT / "README.md").read_text()
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    for command in ('pip install "torch==2.13.0" -e ".[dev]"', "ruff check .", "pytest"):
        assert f"\n{command}" in readme, f"README.md no longer shows `{command}`"
        assert command in ci_lines, f".ci/run no longer runs `{command}`"
