"""The built-in compression methods, registered as tasks on import (and N2N's strategy).

Kept out of ``nas.compress`` itself so that the shared pieces (architectures, loading, export)
import with torch alone; the search core imports this module when it needs a method
(:func:`nas.search.task.load_builtin_tasks`).
"""

from __future__ import annotations

from nas.compress import evonorm, jackpot, magnitude, n2n, n2n_policy, skan_task
from nas.compress.task import CompressionTask

__all__ = ["CompressionTask", "evonorm", "jackpot", "magnitude", "n2n", "n2n_policy", "skan_task"]
