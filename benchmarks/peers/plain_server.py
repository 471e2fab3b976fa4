"""A plain FastAPI + uvicorn server: one forward pass per request, as most users write it."""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, UploadFile

from benchmarks.peers.serving import Model

app = FastAPI()
model = Model()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(file: UploadFile) -> dict[str, object]:  # sync: runs in the thread pool
    return model.predict_png(file.file.read())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    uvicorn.run(app, host="127.0.0.1", port=p.parse_args().port, log_level="warning")
