"""rlhfkit: the full RLHF pipeline, readable and tested."""

__version__ = "0.1.0"
