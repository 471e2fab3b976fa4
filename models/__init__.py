"""LCS library: subspace layers, networks, compression functions f(ω, γ), checkpoints."""

from models.compression import Level, LevelCompressor, compress
from models.levels import FAMILIES, KINDS, Calculator, SubspaceSpec
from models.networks import ARCHITECTURES, SubspaceNet, create_model

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "KINDS",
    "Calculator",
    "Level",
    "LevelCompressor",
    "SubspaceNet",
    "SubspaceSpec",
    "compress",
    "create_model",
]
