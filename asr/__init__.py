"""blockasr: streaming speech recognition with blockwise conformers."""

__version__ = "0.1.0"
