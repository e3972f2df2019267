"""stackforge: reproducible vLLM/PyTorch/Triton builds for Pascal and Volta GPUs."""

__version__ = "0.1.0"
