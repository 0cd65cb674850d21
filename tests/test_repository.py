"""The repository stands on its own: every document it points to is in it, and it says how to
license and cite it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from tests.conftest import ROOT

# Where the project's own text lives (code, workflow, configuration, documentation).
TEXT = [ROOT / "README.md", ROOT / "config.yaml", ROOT / "Snakefile", ROOT / "pyproject.toml",
        *(p for d in ("src", "workflow", "tests", "benchmarks", "docs", "presets", "profiles")
          for p in sorted((ROOT / d).rglob("*")) if p.is_file() and p.suffix in
          {".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".csv", ".sh", ".toml"})]
# A path to a Markdown document as the text cites it: `docs/engines.md`, or one out of the repository.
DOC = re.compile(r"(?<![\w/.])((?:\.\./)*[\w.-]+(?:/[\w.-]+)*\.md)\b")


def inside(source: Path, cited: str) -> bool:
    """Whether ``cited`` (relative to the repository or to ``source``'s folder) is a file of the
    repository; outputs of the workflow (``results/...``) are not asked for."""
    for base in (ROOT, source.parent):
        target = (base / cited).resolve()
        if target.is_relative_to(ROOT) and target.exists():
            return True
    return False


def test_no_reference_to_a_document_outside_the_repository():
    """A newcomer has only the repository: no "section N" of the specification the project
    started from, which they never got, and no path to a document that is not in it."""
    missing = []
    for path in TEXT:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if re.search(r"\b[S]PEC\b", line):  # [S]: so that this file has no match itself
                missing.append(f"{where}: the specification")
            for cited in DOC.findall(line):
                if "/" in cited and not cited.startswith("results/") and not inside(path, cited):
                    missing.append(f"{where}: {cited}")
    assert not missing, "references to documents not in the repository:\n" + "\n".join(missing)


def project() -> dict:
    """pyproject.toml's [project] table."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_field(name: str) -> str:
    """A string field of pyproject.toml's [project] table."""
    return project()[name]


def test_license_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert project_field("license") == "MIT" and text.startswith("MIT License")
    assert "Copyright (c) 2026 the dmaml authors" in text


def test_citation_names_this_software_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == project_field("version") and cff["license"] == project_field("license")
    paper = cff["references"][0]
    assert paper["title"] == "Investigating parallelization of MAML"
    assert [a["family-names"] for a in paper["authors"]] == ["Bollenbacher", "Soulier", "Rhein",
                                                             "Wiskott"]
    assert "preferred-citation" not in cff  # an independent reproduction, not the authors' code


def requirement_name(requirement: str) -> str:
    """The distribution a requirement names, normalised as pip compares names (PEP 503: case, and
    runs of ``-``, ``_`` and ``.``, do not count): ``ray[default]==2.60.0`` -> ``ray``."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_environment_names_the_dependencies_of_pyproject():
    """Every rule names envs/dmaml.yaml for `--software-deployment-method conda`, a route the suite
    never runs: its pip list names exactly the packages of [project.dependencies] and the
    `workflow` extra, and its Python satisfies requires-python."""
    wanted = project()["dependencies"] + project()["optional-dependencies"]["workflow"]
    env = yaml.safe_load((ROOT / "envs" / "dmaml.yaml").read_text())
    (pip,) = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict)]
    named = {requirement_name(r) for r in pip}
    assert {requirement_name(r) for r in wanted} == named
    (python,) = [entry for entry in env["dependencies"] if str(entry).startswith("python=")]
    minimum = project()["requires-python"].removeprefix(">=")
    version = python.removeprefix("python=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_no_module_imports_a_command_module():
    """The command modules (`dmaml status`, the command line) sit on top: the floors below them
    (run_lock, learner, progress, ...) never import them."""
    import ast

    commands = {"dmaml.cli", "dmaml.status"}
    src = ROOT / "src" / "dmaml"
    for path in src.rglob("*.py"):
        name = "dmaml." + ".".join(path.relative_to(src).with_suffix("").parts)
        if name in commands:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            found = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            assert not commands & set(found), f"{name} imports {commands & set(found)}"
