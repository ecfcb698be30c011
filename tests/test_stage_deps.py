"""Every project module a stage imports at load time is a declared dep of that stage (dvc.yaml).

An undeclared module is a stale result waiting to happen: editing it would not rerun the stage.
The check reads each stage's command (``python -m stages.<name>``), follows the module-level
imports of ``stages/`` and ``pipeline/`` files transitively (imports inside functions are the
lazy, subcommand-specific ones and are left to review), and looks for each file among the
stage's deps (a file, or a folder above it).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("stages", "pipeline")
# train@<head> loads the head registry, which imports every head module, but fits only its own
# head: each head's stage declares its own module so that editing one head reruns only its stages.
REGISTRY_HEADS = re.compile(r"^pipeline/heads/(?!base|cache_model|fitstats|losses|training|trainable|__init__)\w+\.py$")


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_imports(path: Path) -> set[str]:
    """Project modules named by the module-level import statements of ``path`` (and their packages)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    out = set()
    for name in names:
        if name.split(".")[0] in PACKAGES:
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # parents' __init__ run too
    return out


def imported_files(module: str) -> set[str]:
    """Repo-relative files of ``module`` and everything it imports at load time, transitively."""
    seen: set[str] = set()
    todo = [module, *(".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1))]
    files: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path.relative_to(REPO).as_posix())
        todo.extend(_top_level_imports(path))
    return files


def _stages():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            found = re.search(r"python -m (stages\.\w+)", stage.cmd or "")
            if found:
                yield stage.addressing, found.group(1), [d.def_path for d in stage.deps]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_imported_project_module_is_a_declared_dep():
    missing = {}
    for name, module, deps in _stages():
        undeclared = sorted(f for f in imported_files(module) if not _covered(f, deps)
                            and not (module == "stages.train" and REGISTRY_HEADS.match(f)))
        if undeclared:
            missing[name] = undeclared
    assert not missing, "\n".join(f"{stage}: {files}" for stage, files in missing.items())


def test_the_import_walk_sees_what_a_stage_imports():
    """The check itself: a known chain (stages.extract -> pipeline.extract -> pipeline.device_decode)."""
    files = imported_files("stages.extract")
    assert {"stages/extract.py", "stages/__init__.py", "pipeline/extract.py", "pipeline/device_decode.py",
            "pipeline/imageio.py", "pipeline/errors.py"} <= files
    assert "pipeline/manifest.py" not in files  # imported inside a function (the views subcommand only)


@pytest.mark.parametrize("module", ["stages.train", "stages.report", "stages.cdul"])
def test_every_stage_module_resolves(module):
    assert f"{module.replace('.', '/')}.py" in imported_files(module)
