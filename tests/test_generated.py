"""The committed gen/ is exactly what tools/protogen.py makes from proto/ now: never stale, never
edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "gen"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_up_to_date(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "protogen.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"tools/protogen.py failed:\n{result.stdout}{result.stderr}"

    committed, fresh = _files(GEN), _files(tmp_path)
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    stale = sorted(
        name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
    )
    assert (missing, extra, stale) == ([], [], []), (
        "gen/ is stale: run make proto and commit the result "
        f"(missing: {missing}, not generated: {extra}, differ: {stale})"
    )
