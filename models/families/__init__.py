"""Compression families, one file each: a frozen config plus the handler registered for it.

Adding a family = one new module here defining a `@register`ed `Family` subclass, plus its
import below.
"""

# Registration order is the order of FAMILIES (and of the CLI's choices).
from models.families import structured  # noqa: F401, I001
from models.families import unstructured  # noqa: F401
from models.families import quantization  # noqa: F401
from models.families.base import Draw, Family, FamilyConfig, Schedule
from models.families.registry import get, names, register

__all__ = ["Draw", "Family", "FamilyConfig", "Schedule", "get", "names", "register"]
