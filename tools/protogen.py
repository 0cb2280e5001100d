"""Regenerates the Python code for proto/ into a folder (gen/ by default).

`make proto` runs this; tests/test_generated.py runs it into a temporary folder and fails when
the committed gen/ differs, so generated code is never stale and never edited by hand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
# The web front door's public API (proto/ackbot/web/) is served with the Connect protocol, so it
# gets connectrpc's code (*_connect.py) instead of grpcio's; the store's API gets grpcio's.
CONNECT_PREFIX = "ackbot/web/"


def _connect_plugin() -> str:
    """protoc-gen-connectrpc, from the environment running this script (its bin folder first)."""
    beside = Path(sys.executable).parent / "protoc-gen-connectrpc"
    found = str(beside) if beside.exists() else shutil.which("protoc-gen-connectrpc")
    if not found:
        raise SystemExit("protoc-gen-connectrpc is missing: pip install -e '.[dev]'")
    return found


def _protoc(out_dir: Path, protos: list[str], *code: str) -> None:
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *code,
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generate(out_dir: Path) -> None:
    # proto/google/ holds googleapis files shipped for other languages' clients; Python gets
    # their code from googleapis-common-protos.
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "ackbot").rglob("*.proto")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    grpc_protos = [p for p in protos if not p.startswith(CONNECT_PREFIX)]
    connect_protos = [p for p in protos if p.startswith(CONNECT_PREFIX)]
    _protoc(out_dir, grpc_protos, f"--grpc_python_out={out_dir}")
    if connect_protos:
        _protoc(
            out_dir,
            connect_protos,
            f"--plugin=protoc-gen-connectrpc={_connect_plugin()}",
            # google.protobuf messages (the *_pb2 beside it), not protobuf-py's; async only.
            "--connectrpc_opt=protobuf=google,io=async",
            f"--connectrpc_out={out_dir}",
        )
    for package_dir in {(out_dir / p).parent for p in protos}:
        proto_dir = package_dir.relative_to(out_dir).as_posix()
        (package_dir / "__init__.py").write_text(
            f'"""Generated from proto/{proto_dir} by `make proto`. Do not edit."""\n'
        )
        (package_dir / "py.typed").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", nargs="?", default=str(ROOT / "gen"), type=Path)
    generate(parser.parse_args().out_dir)


if __name__ == "__main__":
    main()
