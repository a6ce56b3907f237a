"""Toolkit and reproducibility harness for "1 LLM + 1 GPU + 1 day" fine-tuning competitions.

The public API is what `__all__` lists; every other module is an internal detail.
"""

from harness.errors import ConfigError, EntryError, HarnessError, InfrastructureError
from harness.tiny_model import write_tiny_model

__all__ = [
    "ConfigError",
    "EntryError",
    "HarnessError",
    "InfrastructureError",
    "write_tiny_model",
]
