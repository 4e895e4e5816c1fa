"""Generate Python code, gRPC stubs and .pyi stubs from protos/ into a folder."""

import os
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def main(out_dir: str) -> int:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    # The mypy-protobuf plugins are installed next to this interpreter.
    bin_dir = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    code = protoc.main(args)
    if code != 0:
        return int(code)
    # Packages need __init__.py so that setuptools and mypy find them.
    for folder in (out / "llmgateway").rglob("*"):
        if folder.is_dir():
            (folder / "__init__.py").touch()
    (out / "llmgateway" / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
