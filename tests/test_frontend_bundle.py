"""Tests that the committed tab bundle is exactly a fresh build of frontend/."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
BUNDLE = ROOT / "tb_gradplugin" / "static" / "index.js"


@pytest.fixture(scope="module")
def node_modules():
    # scripts/setup.sh --test installs node and npm: a missing one is a failed
    # set-up, not a reason to skip the freshness check.
    assert shutil.which("node") and shutil.which("npm"), "node/npm not installed"
    if not (FRONTEND / "node_modules" / "esbuild").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=FRONTEND,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return FRONTEND / "node_modules"


def build(outfile: pathlib.Path) -> bytes:
    subprocess.run(
        ["node", "build.mjs", "--outfile", str(outfile)],
        cwd=FRONTEND,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return outfile.read_bytes()


def test_committed_bundle_equals_fresh_build(node_modules, tmp_path):
    """A fresh esbuild of frontend/ is byte-for-byte the committed static/index.js."""
    fresh = build(tmp_path / "index.js")
    assert fresh == BUNDLE.read_bytes(), (
        "tb_gradplugin/static/index.js is stale: run `npm run build` in frontend/"
    )


def test_build_is_deterministic(node_modules, tmp_path):
    """Two builds give identical bytes."""
    assert build(tmp_path / "a.js") == build(tmp_path / "b.js")


def test_dependencies_pinned_by_lock_file():
    """package.json pins exact versions and the lock file resolves the same ones."""
    pkg = json.loads((FRONTEND / "package.json").read_text())
    lock = json.loads((FRONTEND / "package-lock.json").read_text())
    for section in ("dependencies", "devDependencies"):
        for name, version in pkg[section].items():
            assert version[0].isdigit(), f"{name} is not pinned: {version}"
            assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_bundle_is_an_es_module_with_render_and_no_remote_imports():
    """The bundle exports render() and imports nothing (no CDN under the CSP)."""
    text = BUNDLE.read_text(encoding="utf-8")
    item = r"\w+(?:\s+as\s+\w+)?"
    exports = re.findall(rf"export\s*\{{\s*({item}(?:\s*,\s*{item})*)\s*\}}", text)
    assert len(exports) == 1, "the bundle needs exactly one export list"
    names = [part.split(" as ")[-1].strip() for part in exports[0].split(",")]
    assert "render" in names
    assert "import(" not in text and 'from"http' not in text.replace(" ", "")
