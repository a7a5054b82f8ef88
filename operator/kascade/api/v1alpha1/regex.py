"""Custom privacy patterns are RE2 expressions: compiled when the object is checked.

RE2 (the engine behind Go's regexp, and so behind the API server's CEL ``matches``)
runs in time linear in the input whatever the pattern; patterns that need backtracking
(backreferences, lookaround) do not compile, so they are rejected at the door instead of
stalling the gateway on a crafted prompt.
"""

from __future__ import annotations

import re2


def check_re2(pattern: str) -> str:
    """Returns ``pattern`` when RE2 compiles it; raises ValueError saying why not."""
    options = re2.Options()
    options.log_errors = False  # the reason travels in the exception, not on stderr
    try:
        re2.compile(pattern, options=options)
    except re2.error as error:
        detail = error.args[0] if error.args else error
        reason = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise ValueError(
            f"not a regular expression in RE2 syntax ({reason}); RE2 has no backreferences "
            "or lookaround, so matching stays linear in the prompt's length"
        ) from None
    return pattern
