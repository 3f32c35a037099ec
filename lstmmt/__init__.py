"""lstmmt: LSTM sequence-to-sequence machine translation from one run directory."""

__version__ = "0.1.0"
