"""The same model behind Ray Serve: one deployment (its default: one replica), raw PNG body."""

from __future__ import annotations

import argparse
import os
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class Digits:
    def __init__(self) -> None:
        from benchmarks.peers.serving import Model

        self.model = Model()

    async def __call__(self, request: Request) -> dict[str, object]:
        return self.model.predict_png(await request.body())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    port = p.parse_args().port
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("LCS_")}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Digits.bind(), route_prefix="/predict")
    while True:  # serve.run returns once deployed; the driver must stay for the app to live
        time.sleep(3600)
