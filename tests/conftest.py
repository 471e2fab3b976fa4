"""Shared test settings: a small, deterministic torch."""

import torch

torch.set_num_threads(1)
torch.manual_seed(0)
