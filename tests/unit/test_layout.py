"""The package layout rule: card folders are subpackages of `netplane`, never top-level packages.

The repository keeps each card in a top-level folder (cni/, proxy/, dns/, ebpf/) but pyproject.toml
maps them to netplane.cni, netplane.proxy, ... With the repository root on sys.path, `dns/` would
shadow dnspython (and `proxy/` the PyPI `proxy`); each folder's __init__.py therefore refuses to be
imported under any other name. These tests fail if that shadowing can come back.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CARDS = ("cni", "proxy", "dns", "ebpf")
PYTHON = sys.executable  # the venv interpreter under `make test`


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _inside(path: str | os.PathLike[str] | None, folder: Path) -> bool:
    if not path:
        return False
    return Path(path).resolve().is_relative_to(folder.resolve())


def _env_with_root_on_path() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # would keep '' (the cwd) off sys.path, hiding the problem
    env.pop("PYTHONPATH", None)
    return env


def _top_level_package_folders() -> set[str]:
    return {
        p.parent.name
        for p in REPO.glob("*/__init__.py")
        if not p.parent.name.startswith(".") and p.parent.name not in {"netplane", "tests"}
    }


def test_every_top_level_package_folder_is_a_mapped_guarded_card():
    """A new card folder must be mapped into netplane.* in pyproject.toml and carry the guard."""
    package_dir = _pyproject()["tool"]["setuptools"].get("package-dir", {})
    assert set(CARDS) <= _top_level_package_folders()
    for folder in sorted(_top_level_package_folders()):
        assert package_dir.get(f"netplane.{folder}") == folder, (
            f"{folder}/ is a package folder but pyproject.toml does not map netplane.{folder} to it"
        )
        init = REPO / folder / "__init__.py"
        assert _has_guard(ast.parse(init.read_text()), folder), f"{init} lacks the guard"


# (a) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("card", CARDS)
def test_top_level_import_from_repo_root_never_finds_card_folder(card):
    """`python -c "import dns"` in the repo root: dnspython or our guard's ImportError, never ./dns."""
    code = (
        "import sys\n"
        "assert sys.path[0] == '', sys.path[:3]\n"  # the cwd (repo root) really is on sys.path
        f"import {card}\n"
        f"print({card}.__file__)\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO,
        env=_env_with_root_on_path(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 0:
        imported = proc.stdout.strip()
        assert not _inside(imported, REPO / card), (
            f"`import {card}` from the repository root silently imported the card folder "
            f"{imported}; the guard in {card}/__init__.py is gone"
        )
    else:
        assert "AssertionError" not in proc.stderr, proc.stderr
        assert "ImportError" in proc.stderr, proc.stderr
        assert f"must be imported as 'netplane.{card}'" in proc.stderr, (
            f"`import {card}` failed, but not because of our guard:\n{proc.stderr}"
        )


@pytest.mark.parametrize("card", CARDS)
def test_subpackage_import_works_outside_repo(card, tmp_path):
    """From anywhere, `import netplane.<card>` resolves to the repo folder (editable install)."""
    proc = subprocess.run(
        [PYTHON, "-c", f"import netplane.{card} as m; print(m.__file__)"],
        cwd=tmp_path,
        env=_env_with_root_on_path(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert _inside(proc.stdout.strip(), REPO / card), proc.stdout


# (b) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("card", CARDS)
def test_in_process_card_resolves_to_repo_folder(card):
    mod = importlib.import_module(f"netplane.{card}")
    assert mod.__name__ == f"netplane.{card}"
    assert Path(mod.__file__).resolve().parent == (REPO / card).resolve()


def test_repo_root_not_on_sys_path():
    """pytest runs with --import-mode=importlib from the console script: the root stays off."""
    root = REPO.resolve()
    on_path = [p for p in sys.path if p in ("", ".") or Path(p).resolve() == root]
    assert not on_path, f"repository root on sys.path: {on_path}"


def test_no_top_level_module_points_into_card_folders():
    for card in CARDS:
        importlib.import_module(f"netplane.{card}")
    offenders = []
    for name, mod in list(sys.modules.items()):
        if name == "netplane" or name.startswith("netplane."):
            continue
        f = getattr(mod, "__file__", None)
        if any(_inside(f, REPO / card) for card in CARDS):
            offenders.append((name, f))
    assert not offenders, f"card folders imported under non-netplane names: {offenders}"
    for card in CARDS:
        mod = sys.modules.get(card)
        if mod is not None:
            assert not _inside(getattr(mod, "__file__", None), REPO), (card, mod)


# (c) ---------------------------------------------------------------------------------------------
def test_pyproject_maps_every_card_folder():
    st = _pyproject()["tool"]["setuptools"]
    package_dir = st.get("package-dir", {})
    assert "" not in package_dir, "mapping the root as a package dir would make cards top-level"
    for card in CARDS:
        assert package_dir.get(f"netplane.{card}") == card, package_dir
        assert f"netplane.{card}" in st["packages"], st["packages"]
    for name, folder in package_dir.items():
        assert name.startswith("netplane."), name
        assert (REPO / folder / "__init__.py").is_file(), folder


def test_pyproject_has_no_top_level_package_besides_netplane():
    st = _pyproject()["tool"]["setuptools"]
    packages = st.get("packages")
    assert isinstance(packages, list), "packages must be listed explicitly (no find/auto-discovery)"
    tops = {p.split(".")[0] for p in packages}
    assert tops == {"netplane"}, tops
    assert "py-modules" not in st, st.get("py-modules")


# (d) ---------------------------------------------------------------------------------------------
def _has_guard(tree: ast.Module, card: str) -> bool:
    for node in tree.body:
        if not isinstance(node, ast.If):
            continue
        test = node.test
        if not (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.NotEq)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == f"netplane.{card}"
        ):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.Raise) and stmt.exc is not None:
                exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
                if isinstance(exc, ast.Name) and exc.id == "ImportError":
                    return True
    return False


@pytest.mark.parametrize("card", CARDS)
def test_card_init_has_guard(card):
    init = REPO / card / "__init__.py"
    tree = ast.parse(init.read_text(), filename=str(init))
    assert _has_guard(tree, card), (
        f'{init} must start with `if __name__ != "netplane.{card}": raise ImportError(...)`'
    )


@pytest.mark.parametrize("card", CARDS)
def test_card_init_guard_fires_under_top_level_name(card):
    """Executing the folder's __init__.py as top-level `<card>` raises ImportError (not cached)."""
    init = REPO / card / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        card, init, submodule_search_locations=[str(init.parent)]
    )
    mod = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=f"netplane.{card}"):
        spec.loader.exec_module(mod)
    assert sys.modules.get(card) is not mod
