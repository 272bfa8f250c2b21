"""The calibration target every command defaults to (``calibrate``, ``report``, ``collect``, ``up``).

A calibrated cascade promises that the verdicts it accepts agree with humans at least ``1 - alpha``
of the time, with probability at least ``1 - delta`` (``cascade_config.py`` records both). Its own
module so that the command line reads the defaults without loading pydantic; docs/calibration.md
says why these values.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_ALPHA", "DEFAULT_DELTA"]

#: Allowed disagreement with humans: accepted verdicts agree at least ``1 - DEFAULT_ALPHA`` ...
DEFAULT_ALPHA: Final = 0.1
#: ... with probability at least ``1 - DEFAULT_DELTA``.
DEFAULT_DELTA: Final = 0.1
