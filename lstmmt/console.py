"""The two rich consoles every step writes through: results on stdout, so that a pipe gets only
results, and messages, warnings and progress on stderr. A message is one line whatever its
length (soft wrap): a long path or command stays whole, for copying and for grep."""

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)
