"""The root of the errors the command line raises.

    TradeplaneCliError       (a RuntimeError, as each of them was before)
    ├── StartError           processes: a child process did not come up
    └── UpError              up: the local exchange could not start
"""

from __future__ import annotations


class TradeplaneCliError(RuntimeError):
    """Base of every error the command line raises."""
