"""align-bench: a reproducible benchmark suite for LLM post-training alignment.

Nothing runs at import; the user interface is the Makefile, which calls ``bench`` subcommands
(``bench --help``).
"""

__version__ = "0.1.0"
