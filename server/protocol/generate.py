"""Regenerate the gRPC stubs from inference.proto: `python -m server.protocol.generate`."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = "server/protocol/inference.proto"
# tritonclient and kserve register the same `inference.*` names in protobuf's default pool;
# a process holding either (tests, an embedding application) could not import stubs that did
# too. Ours go to their own pool: the one change made to protoc's output.
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}"]
    args += [f"--grpc_python_out={out}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    pb2 = out / "server/protocol/inference_pb2.py"
    text = pb2.read_text()
    if DEFAULT_POOL not in text:
        raise RuntimeError("protoc's output changed shape: check the pool substitution")
    pb2.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    return [pb2, pb2.with_suffix(".pyi"), out / "server/protocol/inference_pb2_grpc.py"]


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    sys.exit(0)
