"""The environment `make setup` builds: Debian's bcc next to pip packages, and the CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
# `make test` runs .venv/bin/pytest; fall back to the running interpreter's bin dir otherwise.
BIN = VENV_BIN if (VENV_BIN / "python").exists() else Path(sys.executable).parent
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd or REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


@pytest.mark.skipif(
    not DEBIAN_BCC.is_dir(),
    reason=f"{DEBIAN_BCC} absent: python3-bpfcc not installed (run `make setup`)",
)
def test_venv_imports_bcc_with_pip_packages(tmp_path):
    code = (
        "import bcc, orjson, yaml\n"
        "print(bcc.__file__)\n"
        "assert orjson.loads(orjson.dumps({'a': 1})) == {'a': 1}\n"
        "assert yaml.safe_load('a: 1') == {'a': 1}\n"
        "assert callable(bcc.BPF)\n"
    )
    proc = _run(str(BIN / "python"), "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bcc_file = proc.stdout.split()[0]
    assert Path(bcc_file).resolve().is_relative_to(DEBIAN_BCC.resolve()), bcc_file


def test_venv_is_debian_python_with_system_site_packages():
    cfg_path = BIN.parent / "pyvenv.cfg"
    if not cfg_path.exists():
        pytest.skip(f"not running from a venv ({BIN})")
    cfg = dict(
        line.split(" = ", 1) for line in cfg_path.read_text().splitlines() if " = " in line
    )
    assert cfg.get("home") == "/usr/bin", cfg
    assert cfg.get("include-system-site-packages") == "true", cfg


def test_netplane_version():
    proc = _run(str(BIN / "netplane"), "--version")
    assert proc.returncode == 0, proc.stderr
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert proc.stdout.strip() == f"netplane {version}", proc.stdout


@pytest.mark.parametrize("args", [("--help",), ("apiserver", "--help")], ids=" ".join)
def test_netplane_help(args):
    proc = _run(str(BIN / "netplane"), *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: netplane"), proc.stdout
