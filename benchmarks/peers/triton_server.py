"""The same model behind NVIDIA Triton (PyTriton: tritonserver with a Python-backend model).

Backend from LCS_PEER_BACKEND: an ONNX Runtime session (1 intra-op thread) or TorchScript.
One model instance; Triton's dynamic batcher on (its own recommendation for throughput)."""

from __future__ import annotations

import argparse

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.serving import Model

model = Model()


@batch
def infer(input: np.ndarray) -> dict[str, np.ndarray]:  # the OIP tensor's name
    return {"probabilities": model(input)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    a = p.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=a.port,
        grpc_address="127.0.0.1",
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="digits",
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(model.c, model.h, model.w))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
            strict=False,
        )
        triton.serve()
