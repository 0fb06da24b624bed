"""A third-party plugin used by the tests, loaded through the ``nas.plugins`` entry point.

It registers the supernet ``slow-nb201``: NAS-Bench-201 whose evaluation appends a line to the
file named by ``NAS_TEST_MARKER`` (so a test knows a trial is running), sleeps
``NAS_TEST_SLEEP`` seconds, and raises when ``NAS_TEST_FAIL`` is set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from nas.supernets import register_supernet
from nas.supernets.nb201 import NB201Task


class SlowNB201(NB201Task):
    name = "slow-nb201"
    default_strategy = "random"

    def evaluate(self, params: Any) -> dict[str, float]:
        marker = os.environ.get("NAS_TEST_MARKER")
        if marker:
            with open(marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        time.sleep(float(os.environ.get("NAS_TEST_SLEEP", "0")))
        if os.environ.get("NAS_TEST_FAIL"):
            raise RuntimeError("deliberate evaluation failure")
        return super().evaluate(params)


@register_supernet("slow-nb201")
def slow_nb201(hw: str = "gpu", data: str | None = None, **_: Any) -> SlowNB201:
    """NAS-Bench-201 with a slow, observable evaluation (tests only)."""
    return SlowNB201(hw=hw, data=data)
