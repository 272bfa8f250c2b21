"""Generate the Python protobuf and gRPC code for the evalstream wire contract.

Run from anywhere: ``python protos/generate.py`` (or ``--out DIR`` to write elsewhere, which is how
the staleness test checks that the committed code matches the .proto files). Output lands next to
the .proto files, in ``protos/evalstream/v1/``, importable as ``evalstream.v1``.

grpcio-tools is pinned to 1.81.1 because Beam 2.77 needs protobuf<7, and newer grpcio-tools
generate code that needs protobuf 7.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted((PROTO_ROOT / "evalstream" / "v1").glob("*.proto"))


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency

    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    generate(parser.parse_args().out)
    sys.stdout.write(f"generated {len(PROTO_FILES)} proto files into {parser.parse_args().out}\n")


if __name__ == "__main__":
    main()
