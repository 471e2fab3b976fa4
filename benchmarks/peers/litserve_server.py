"""The same model behind LitServe (Lightning AI), with its default settings on CPU."""

from __future__ import annotations

import argparse

import litserve as ls

from benchmarks.peers.serving import Model


class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Model()

    def decode_request(self, request):  # a multipart form: its "file" field
        return self.model.preprocess(request["file"].file.read())

    def predict(self, x):
        return self.model(x[None])[0]

    def encode_response(self, output):
        return {"predictions": self.model.top5(output)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8200)
    server = ls.LitServer(DigitAPI(), accelerator="cpu", devices=1)
    server.run(host="127.0.0.1", port=p.parse_args().port, generate_client_file=False)
