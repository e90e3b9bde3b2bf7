"""mcar_lib: mode connectivity and adversarial robustness, as a small PyTorch library.

The library behind the mcar-book executable textbook. Every module takes plain ``nn.Module`` objects,
runs on whatever device the model lives on, and never mutates a model it is given.
"""

__version__ = "0.1.0"
