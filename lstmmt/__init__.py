"""lstmmt: LSTM sequence-to-sequence machine translation from one run directory.

`from lstmmt import Translator` gives the Python API (lstmmt/translator.py, docs/api.md);
it is imported on first use, so the command line starts without loading PyTorch for --help.
`UserError` is the exception for mistakes a user can fix (lstmmt/errors.py).
"""

from typing import Any

from lstmmt.errors import UserError

__version__ = "0.1.0"
__all__ = ["Translator", "Translation", "Score", "UserError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lstmmt import translator

        return getattr(translator, name)
    raise AttributeError(f"module 'lstmmt' has no attribute {name!r}")
