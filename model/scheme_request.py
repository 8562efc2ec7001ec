"""What a client asks for: a scheme by name with its one parameter, validated without torch.

The server's request schemas (`server/v2_schemas.py`) and its routes read the names and the
checks from here; `model.schemes.build_scheme` turns a request into the scheme that runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 2**20


def mib_to_bytes(mib: float) -> int:
    """MiB as whole bytes, a huge figure (1e308 MiB: "no limit") clamped to a finite one."""
    return math.ceil(min(mib * MIB, 2.0**62))


# What a client may ask for, with the one parameter each takes. `oracle` needs the ground
# truth, so it is offered to evaluation and training only.
REQUESTABLE: dict[str, dict] = {
    "all": {"description": "every site is refined (QGN-All): most memory, pixels read at level 5"},
    "pc": {
        "description": "predicted composites are refined (QGN-PC), and at levels 0-1 their "
        "neighbours: least memory"
    },
    "threshold": {
        "description": "sites with p(composite) >= threshold are refined, and at levels 0-1 "
        "their neighbours",
        "parameters": {
            "threshold": {"type": "number", "minimum": 0, "maximum": 1, "required": True}
        },
    },
    "budget": {
        "description": "threshold 0.1's sites, the most uncertain first, as many as fit a memory "
        "budget, are refined",
        "parameters": {
            "budget_mb": {"type": "number", "exclusiveMinimum": 0, "unit": "MiB", "required": True}
        },
    },
    "auto": {
        "description": "the server picks, when the request is admitted, the most accurate "
        "setting whose predicted peak fits the memory free then (and max_memory_mb) and whose "
        "predicted run time fits what is left of deadline_ms",
        "parameters": {
            "deadline_ms": {"type": "number", "exclusiveMinimum": 0, "unit": "ms"},
            "max_memory_mb": {"type": "number", "exclusiveMinimum": 0, "unit": "MiB"},
        },
    },
}
# The parameters only `auto` takes.
AUTO_PARAMETERS = ("deadline_ms", "max_memory_mb")
SCHEME_NAMES = (*REQUESTABLE, "oracle")


class SchemeError(ValueError):
    """A scheme request that cannot run; `code` names the kind (the API's error code)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SchemeRequest:
    """A scheme by name with its one parameter, validated once, when it is made.

    The CLI, the HTTP route and evaluation all build their schemes from one of these.
    """

    name: str
    threshold: float | None = None
    budget_mb: float | None = None
    deadline_ms: float | None = None  # auto only: from the request's arrival
    max_memory_mb: float | None = None  # auto only

    def query(self) -> str:
        """The request as `/v1/segment`'s query string: `scheme=threshold&threshold=0.3`."""
        names = ("threshold", "budget_mb", *AUTO_PARAMETERS)
        given = [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]
        return "&".join([f"scheme={self.name}", *(f"{n}={value:g}" for n, value in given)])

    def __post_init__(self):
        if self.name not in SCHEME_NAMES:
            raise SchemeError(
                "unknown_scheme",
                f"unknown scheme {self.name!r}; valid schemes: {', '.join(SCHEME_NAMES)}",
            )
        values = {
            name: getattr(self, name) for name in ("threshold", "budget_mb", *AUTO_PARAMETERS)
        }
        for field_name, value in values.items():
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                raise SchemeError(
                    "invalid_parameter", f"{field_name} must be a finite number, got {value}"
                )
        if self.name == "threshold":
            if self.threshold is None:
                raise SchemeError("missing_parameter", "scheme=threshold needs threshold in [0, 1]")
            if not 0.0 <= self.threshold <= 1.0:
                raise SchemeError(
                    "invalid_parameter", f"threshold must lie in [0, 1], got {self.threshold}"
                )
        elif self.threshold is not None:
            raise SchemeError(
                "invalid_parameter",
                f"threshold is used only with scheme=threshold, not {self.name}",
            )
        if self.name == "budget":
            if self.budget_mb is None:
                raise SchemeError("missing_parameter", "scheme=budget needs budget_mb (MiB, > 0)")
            if self.budget_mb <= 0:
                raise SchemeError(
                    "invalid_parameter", f"budget_mb must be > 0, got {self.budget_mb}"
                )
        elif self.budget_mb is not None:
            raise SchemeError(
                "invalid_parameter", f"budget_mb is used only with scheme=budget, not {self.name}"
            )
        for field_name in AUTO_PARAMETERS:
            value = values[field_name]
            if value is not None and self.name != "auto":
                raise SchemeError(
                    "invalid_parameter",
                    f"{field_name} is used only with scheme=auto, not {self.name}",
                )
            if value is not None and value <= 0:
                raise SchemeError("invalid_parameter", f"{field_name} must be > 0, got {value}")
