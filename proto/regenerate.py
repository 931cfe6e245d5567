"""Regenerate src/corolla/wire/corolla_pb2.py(i) from proto/corolla/v1/corolla.proto.

    pip install grpcio-tools && python proto/regenerate.py

The generated module is committed: installing corolla needs only the protobuf runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "src" / "corolla" / "wire"


def main() -> int:
    src = ROOT / "corolla" / "v1" / "corolla.proto"
    tmp = OUT / "_gen"
    tmp.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", str(src)])
    if rc != 0:
        return rc
    for ext in ("py", "pyi"):
        gen = tmp / "corolla" / "v1" / f"corolla_pb2.{ext}"
        (OUT / f"corolla_pb2.{ext}").write_text(gen.read_text())
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    print(f"wrote {OUT / 'corolla_pb2.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
