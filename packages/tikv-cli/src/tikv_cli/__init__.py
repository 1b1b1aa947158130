"""The ``tikv`` command.

A demo tour, one-shot commands, an interactive shell, the embedded cluster and benchmarks.
"""

__version__ = "0.1.0"
