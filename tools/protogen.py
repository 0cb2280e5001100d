"""Regenerates the Python code for proto/ into a folder (gen/ by default).

`make proto` runs this; tests/test_generated.py runs it into a temporary folder and fails when
the committed gen/ differs, so generated code is never stale and never edited by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
INIT_TEXT = '"""Generated from proto/ackbot/v1 by `make proto`. Do not edit."""\n'


def generate(out_dir: Path) -> None:
    # proto/google/ holds googleapis files shipped for other languages' clients; Python gets
    # their code from googleapis-common-protos.
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "ackbot").rglob("*.proto")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {(out_dir / p).parent for p in protos}:
        (package_dir / "__init__.py").write_text(INIT_TEXT)
        (package_dir / "py.typed").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", nargs="?", default=str(ROOT / "gen"), type=Path)
    generate(parser.parse_args().out_dir)


if __name__ == "__main__":
    main()
