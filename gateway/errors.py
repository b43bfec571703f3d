"""The one way a handler refuses a request: raise :class:`Refused`; the middleware turns it into a JSON reply.

Every refusal carries a stable machine-readable ``code`` (also the ``reason`` label of
``stepline_gateway_rejections_total``) and a message naming the problem::

    {"error": "run_mismatch", "message": "frame 3 is for p/other, the URL names p/r", "frame": 3}
"""

from __future__ import annotations

import math
from typing import Any

from schemas import SteplineError


class Refused(SteplineError):
    """A request the gateway refuses whole; nothing it carried was applied."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # HTTP's Retry-After is whole seconds; never 0, which some clients read as "hammer me".
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}
