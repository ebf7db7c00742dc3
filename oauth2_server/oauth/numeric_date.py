"""JWT time claims (`exp`, `iat`, `nbf`) as numbers a clock can compare: RFC 7519 §2
NumericDate. One rule for DPoP proofs (RFC 9449 §4.3) and client assertions (RFC 7523 §3).
"""

from __future__ import annotations

import math
from typing import Any


def numeric_date(value: Any) -> float | None:
    """`value` as seconds since 1970-01-01T00:00:00Z (UTC), a finite float; None when it
    is not one: a string, a boolean, NaN, ±Infinity (Python's json accepts both) or an
    integer beyond float's range (which would otherwise raise OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
