"""Generate the Go client's messages and gRPC stubs (clients/go/llmgatewayv1) from the
contract in protos/llmgateway/v1, with protoc-gen-go and protoc-gen-go-grpc on PATH."""

import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GO_PACKAGE = "llmgateway/clients/go/llmgatewayv1"


def main(out_dir: str) -> int:
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(plugin) is None:
            print(f"{plugin} is missing: make go-deps installs it", file=sys.stderr)
            return 1
    contract = PROTOS / "llmgateway" / "v1"
    files = sorted(str(p.relative_to(PROTOS)) for p in contract.glob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # The protos carry no go_package option: the contract names no language's paths, so
    # the mapping of each file to the Go package is given here.
    mappings = [f"M{name}={GO_PACKAGE};llmgatewayv1" for name in files]
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--go_out={scratch}",
            f"--go-grpc_out={scratch}",
            *(f"--go_opt={m}" for m in mappings),
            *(f"--go-grpc_opt={m}" for m in mappings),
            *files,
        ]
        code = protoc.main(args)
        if code != 0:
            return int(code)
        out = pathlib.Path(out_dir)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pathlib.Path(scratch) / GO_PACKAGE, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
