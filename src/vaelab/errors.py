"""The one exception type users see: a message that names the problem and the fix.

The CLI prints ``error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations


class VaelabError(Exception):
    """A user-facing error. Its message is one line: what went wrong, and how to fix it."""
