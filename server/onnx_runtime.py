"""ONNX Runtime, imported with its telemetry off: the one place the server imports it from."""

import os

# ORT 1.32 records telemetry events (a device id, process and session information) in a
# SQLite store under ~/.cache/Microsoft/DeveloperTools for upload to Microsoft: measured here,
# a daemon start adds events and the store held 1 700 after a day of tests. An edge daemon
# sends nothing it was not asked to. The variable must be set before the library loads
# (disable_telemetry_events() afterwards still records the start-up event); an operator's
# own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort

ort.disable_telemetry_events()

__all__ = ["ort"]
