"""The same model as an MLServer custom runtime (MLServer has no built-in ONNX runtime)."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peers.serving import Model


class Digits(MLModel):
    async def load(self) -> bool:
        self.model = Model()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        out = NumpyCodec.encode_output("probabilities", self.model(x))
        return InferenceResponse(model_name=self.name, outputs=[out])
