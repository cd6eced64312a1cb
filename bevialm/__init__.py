"""BeviaLLM: a small GPT-style character-level language model in NumPy, built
from gradient-verified pure forward/backward pairs."""

__version__ = "0.1.0"
