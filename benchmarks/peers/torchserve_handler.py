"""The same model as a TorchServe custom handler: the raw PNG body in, top-5 JSON out.

Archived with serving.py and the exported model as extra files (the archive's folder is on
the worker's sys.path), so the worker needs nothing of this project."""

from __future__ import annotations

from pathlib import Path

from serving import Model  # type: ignore[import-not-found]  # an extra file of the archive

_model: Model | None = None


def handle(data, context):
    global _model
    if _model is None:
        _model = Model(folder=Path(context.system_properties["model_dir"]))
    if data is None:
        return None
    return [_model.predict_png(bytes(row.get("data") or row.get("body"))) for row in data]
