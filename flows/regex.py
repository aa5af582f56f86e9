"""Regular expressions of the configuration (classifier rules), compiled by RE2.

RE2 matches in time linear in the text whatever the pattern, so no rule can stall the outlet:
Python's backtracking `re` takes exponential time on patterns like `^(\\w+\\s?)*$` against a
name that almost matches. RE2 has no backreferences or lookaround; such a pattern is refused
when the configuration is read, naming its key.
"""

from __future__ import annotations

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, by the configuration check

Pattern = re2._Regexp


def compile_regex(pattern: str) -> Pattern:
    """The compiled pattern; ValueError naming what RE2 refused."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise ValueError(f"not a regular expression RE2 accepts (linear-time matching: no backreferences "
                         f"or lookaround): {reason}") from None
