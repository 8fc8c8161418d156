"""Regenerate the Python gRPC modules from the .proto files: ``python -m protos.codegen``.

Generated modules are checked in (so the edge install needs no grpcio-tools) and never edited
by hand; ``tests/test_protos_fresh.py`` regenerates into a temporary folder and fails on any
difference. Output depends on the grpcio-tools version, which the ``dev`` extra pins.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/embedding/v1/embedding.proto", "protos/tei/v1/tei.proto")


def generate(out_dir: Path) -> None:
    """Compile every proto in PROTO_FILES into ``out_dir`` (laid out like the repo root)."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is missing: pip install -e '.[dev]'") from exc
    well_known = str(resources.files("grpc_tools") / "_proto")
    for proto in PROTO_FILES:
        args = [
            "protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(REPO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
