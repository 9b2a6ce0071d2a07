"""
Validation helpers shared by the pack's pure modules: one error type that
carries every problem found (each message names its field, e.g.
``campuses.east.kiosks.k1.mac: ...``), the rule for fleet names (Salt minion
ids, campus names), and the "optional mapping" check.
"""

import re

__virtualname__ = "fleet_fields"

# Salt minion ids, campus names, labels: letters, digits, dot, dash, underscore
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def __virtual__():
    return __virtualname__


class FieldErrors(ValueError):
    """Every problem of one request or document; ``errors`` lists them, each naming its field."""

    def __init__(self, errors):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def mapping(value, field, errors):
    """``value`` if it is a dict, ``{}`` for None; anything else is recorded in ``errors``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{field}: expected a mapping, got {type(value).__name__}")
        return {}
    return value
