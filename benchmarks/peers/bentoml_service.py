"""The same model as a BentoML service (1.4 style): a multipart image field, its defaults."""

from __future__ import annotations

import bentoml
from PIL import Image

from benchmarks.peers.serving import Model


@bentoml.service
class Digits:
    def __init__(self) -> None:
        self.model = Model()

    @bentoml.api
    def predict(self, file: Image.Image) -> dict[str, object]:  # sync: BentoML's thread pool
        return {"predictions": self.model.top5(self.model(self.model.array(file)[None])[0])}
