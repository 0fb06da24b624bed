"""``magnitude``: structured channel pruning, then global unstructured magnitude pruning.

The simplest method that exercises the whole ``nas compress`` path. A candidate is two
percentages, in steps of 5:

- ``channels_pct``: the share of output channels removed from every prunable group, smallest
  L1 norm first (torch-pruning keeps residual additions and dependent layers consistent); the
  model gets narrower, so dense MACs and latency fall;
- ``sparsity_pct``: the share of all Conv2d / Linear weights then set to zero, smallest
  magnitude first across layers (``torch.nn.utils.prune.global_unstructured``); non-zero
  parameters and MACs fall, the dense shape stays.

With data, BatchNorm statistics are re-estimated on training images afterwards (no weight is
trained); ``--finetune-epochs`` distils the selected model afterwards.
"""

from __future__ import annotations

from typing import ClassVar

from optuna.distributions import IntDistribution

from nas.compress.arch import Network
from nas.compress.pruning import prune_channels, prune_unstructured
from nas.compress.task import CompressionTask
from nas.search.space import Params, Space
from nas.search.task import register_task

#: the largest percentages searched, and the step
MAX_CHANNELS_PCT = 75
MAX_SPARSITY_PCT = 95
STEP = 5


@register_task("magnitude")
class MagnitudeTask(CompressionTask):
    """Channel pruning by L1 norm plus global magnitude pruning (see the module docstring)."""

    name: str = "magnitude"
    default_strategy: ClassVar[str] = "tpe"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._space: Space = {
            "channels_pct": IntDistribution(0, MAX_CHANNELS_PCT, step=STEP),
            "sparsity_pct": IntDistribution(0, MAX_SPARSITY_PCT, step=STEP),
        }

    def space(self) -> Space:
        return self._space

    def apply(self, model: Network, params: Params) -> Network:
        narrow = prune_channels(model, int(params["channels_pct"]) / 100)
        return prune_unstructured(narrow, int(params["sparsity_pct"]) / 100)

    def initial_candidates(self) -> list[Params]:
        """One step along each axis and half-way along the sparsity axis: pruning one kind
        alone is often where the smallest model within the drop bar lies, and random start-up
        candidates rarely sit on an axis."""
        return [
            {"channels_pct": 0, "sparsity_pct": 50},
            {"channels_pct": 0, "sparsity_pct": 25},
            {"channels_pct": 10, "sparsity_pct": 0},
        ]

    def options(self) -> dict[str, object]:
        return {
            "max_channels_pct": MAX_CHANNELS_PCT,
            "max_sparsity_pct": MAX_SPARSITY_PCT,
            "step": STEP,
        }
