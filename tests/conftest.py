"""Shared test settings: a small, deterministic torch."""

import os

import torch

# gRPC off unless a test asks for it (LCS_GRPC_PORT in its env): in-process apps and live
# servers would all bind the default 8001 at once.
os.environ["LCS_GRPC_PORT"] = "0"

torch.set_num_threads(1)
torch.manual_seed(0)
