"""N2N's two-stage policy search, as the strategy ``n2n`` for the ``n2n`` method.

Stage 1 (the first ``stage1`` trials, default half the budget): a bidirectional LSTM reads the
teacher's layers (:meth:`nas.compress.n2n.Layer.features`) and emits keep / remove per layer;
every layer keeps all its outputs. Stage 2 (the rest): the removals of the best stage-1 child are
fixed and an autoregressive LSTM (its previous action fed back) picks a keep-fraction per kept
layer. Both learn by REINFORCE with a moving-average baseline, one update per ``rollouts``
measured children, from the trials' ``reward`` (the first objective).

Like every strategy here it keeps no state of its own: the policies are rebuilt by replaying the
updates over the study's COMPLETE trials in trial-number order, so a resumed run continues the
same search. ``policy=FILE`` starts both policies from a saved file (policy transfer: the
policies read per-layer features, so one learned on ``resnet20`` runs on ``resnet32``);
:meth:`N2NStrategy.save_policy` writes them (``nas compress`` saves ``policy.safetensors``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from optuna.study import Study
from optuna.trial import FrozenTrial
from torch import nn

from nas.compress.n2n import FRACTIONS, N2NTask
from nas.search.objectives import Objective
from nas.search.space import Params, Space
from nas.search.strategies._base import Strategy, completed, register_strategy

HIDDEN = 32
FORMAT = "nas-n2n-policy"


class KeepPolicy(nn.Module):
    """Stage 1: bidirectional LSTM over layer features → P(keep) per layer."""

    def __init__(self, features: int):
        super().__init__()
        self.lstm = nn.LSTM(features, HIDDEN, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, 1)
        nn.init.constant_(self.head.bias, 2.0)  # start by keeping most layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x.unsqueeze(0))
        return torch.sigmoid(self.head(h[0]).squeeze(-1))


class FractionPolicy(nn.Module):
    """Stage 2: autoregressive LSTM cell over kept layers → a distribution over FRACTIONS."""

    def __init__(self, features: int):
        super().__init__()
        self.cell = nn.LSTMCell(features + len(FRACTIONS), HIDDEN)
        self.head = nn.Linear(HIDDEN, len(FRACTIONS))

    def step(
        self, x: torch.Tensor, prev: int | None, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        onehot = torch.zeros(len(FRACTIONS))
        if prev is not None:
            onehot[prev] = 1.0
        h, c = self.cell(torch.cat([x, onehot]).unsqueeze(0), state)
        return torch.log_softmax(self.head(h[0]), -1), (h, c)


@register_strategy("n2n")
class N2NStrategy(Strategy):
    """Two-stage REINFORCE over the ``n2n`` method's space (see the module docstring)."""

    name: ClassVar[str] = "n2n"
    multi_objective: ClassVar[bool] = False
    uses_budget: ClassVar[bool] = True
    needs_task: ClassVar[bool] = True

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        task: Any = None,
        budget: int = 40,
        stage1: int | None = None,
        rollouts: int = 4,
        lr: float = 0.003,
        baseline_decay: float = 0.8,
        policy: str | None = None,
        seed: int | None = None,
        constrained: bool = False,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        if not isinstance(task, N2NTask):
            raise ValueError("the n2n strategy drives the n2n method only")
        if objectives[0].metric != "reward":
            raise ValueError("the n2n strategy learns from the objective reward (put it first)")
        if rollouts < 1 or budget < 2:
            raise ValueError("n2n needs rollouts >= 1 and a budget of at least 2")
        self.features = torch.tensor([lay.features() for lay in task.layers], dtype=torch.float32)
        self.n = len(task.layers)
        self.stage1 = int(stage1) if stage1 is not None else max(1, budget // 2)
        self.rollouts, self.lr, self.decay = int(rollouts), float(lr), float(baseline_decay)
        torch.manual_seed(self.seed)
        self.keep_policy = KeepPolicy(self.features.shape[1])
        self.frac_policy = FractionPolicy(self.features.shape[1])
        if policy is not None:
            load_policy(policy, self.keep_policy, self.frac_policy)
        self._initial = (
            copy.deepcopy(self.keep_policy.state_dict()),
            copy.deepcopy(self.frac_policy.state_dict()),
        )
        self._seen: list[int] = []  # trial numbers replayed into the current policies
        self._baselines: dict[int, float | None] = {1: None, 2: None}

    # -- proposals ----------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        trials = [t for t in completed(study) if set(t.params) >= set(self.space)]
        self._replay(trials)
        g = torch.Generator().manual_seed(int(self.rng(trial, 31).integers(2**31)))
        if trial.number < self.stage1 or not trials:
            keep, _ = self._sample_keep(g)
            return self._params(keep, [len(FRACTIONS) - 1] * self.n)
        keep = self._best_keep(trials)
        picks, _ = self._sample_fractions(keep, g)
        return self._params(keep, picks)

    def _params(self, keep: Sequence[bool], picks: Sequence[int]) -> Params:
        out: Params = {}
        for i in range(self.n):
            out[f"keep{i}"] = int(keep[i])
            out[f"frac{i}"] = FRACTIONS[picks[i]] if keep[i] else 1.0
        return out

    def _sample_keep(self, g: torch.Generator | None) -> tuple[list[bool], torch.Tensor]:
        p = self.keep_policy(self.features)
        u = torch.rand(self.n, generator=g)
        keep = (u < p.detach()).tolist()
        logp = torch.where(torch.tensor(keep), p, 1 - p).clamp_min(1e-6).log().sum()
        return [bool(k) for k in keep], logp

    def _sample_fractions(
        self, keep: Sequence[bool], g: torch.Generator | None, given: Sequence[int] | None = None
    ) -> tuple[list[int], torch.Tensor]:
        picks, logp, prev, state = [], torch.tensor(0.0), None, None
        for i in range(self.n):
            if not keep[i]:
                picks.append(len(FRACTIONS) - 1)
                continue
            logits, state = self.frac_policy.step(self.features[i], prev, state)
            if given is not None:
                a = given[i]
            else:
                a = int(torch.multinomial(logits.exp().detach(), 1, generator=g))
            logp = logp + logits[a]
            picks.append(a)
            prev = a
        return picks, logp

    def _best_keep(self, trials: Sequence[FrozenTrial]) -> list[bool]:
        first = [t for t in trials if t.number < self.stage1] or list(trials)
        best = max(first, key=lambda t: (t.values[0], -t.number))
        return [bool(best.params[f"keep{i}"]) for i in range(self.n)]

    # -- learning by replay -------------------------------------------------------------
    def learn(self, study: Study) -> None:
        """Bring the policies up to date with every COMPLETE trial of ``study``."""
        self._replay([t for t in completed(study) if set(t.params) >= set(self.space)])

    def _replay(self, trials: Sequence[FrozenTrial]) -> None:
        numbers = [t.number for t in trials]
        if numbers[: len(self._seen)] != self._seen:  # another order: start again
            self.keep_policy.load_state_dict(self._initial[0])
            self.frac_policy.load_state_dict(self._initial[1])
            self._seen, self._baselines = [], {1: None, 2: None}
        done = len(self._seen) // self.rollouts * self.rollouts
        pending = list(trials[done:])
        while len(pending) >= self.rollouts:
            batch, pending = pending[: self.rollouts], pending[self.rollouts :]
            for stage in (1, 2):
                part = [t for t in batch if (t.number < self.stage1) == (stage == 1)]
                if part:
                    self._update(stage, part, trials)
            done += self.rollouts
        self._seen = numbers[:done]

    def _update(
        self, stage: int, batch: Sequence[FrozenTrial], trials: Sequence[FrozenTrial]
    ) -> None:
        rewards = np.array([t.values[0] for t in batch], dtype=float)
        base = self._baselines[stage]
        base = float(rewards.mean()) if base is None else base
        policy = self.keep_policy if stage == 1 else self.frac_policy
        opt = torch.optim.Adam(policy.parameters(), lr=self.lr)
        loss = torch.tensor(0.0)
        for t, r in zip(batch, rewards, strict=True):
            keep = [bool(t.params[f"keep{i}"]) for i in range(self.n)]
            if stage == 1:
                p = self.keep_policy(self.features)
                logp = torch.where(torch.tensor(keep), p, 1 - p).clamp_min(1e-6).log().sum()
            else:
                given = [_index(t.params[f"frac{i}"]) for i in range(self.n)]
                _, logp = self._sample_fractions(keep, None, given)
            loss = loss - (float(r) - base) * logp
        opt.zero_grad()
        (loss / len(batch)).backward()
        opt.step()
        self._baselines[stage] = self.decay * base + (1 - self.decay) * float(rewards.mean())

    def save_policy(self, path: str | Path) -> Path:
        """Write both policies (safetensors, no pickle)."""
        from safetensors.torch import save_file

        tensors = {f"keep.{k}": v for k, v in self.keep_policy.state_dict().items()}
        tensors |= {f"frac.{k}": v for k, v in self.frac_policy.state_dict().items()}
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), {"format": FORMAT})
        return out


def _index(fraction: Any) -> int:
    return int(np.argmin([abs(float(fraction) - f) for f in FRACTIONS]))


def load_policy(path: str | Path, keep: KeepPolicy, frac: FractionPolicy) -> None:
    """Load policies saved by :meth:`N2NStrategy.save_policy` into ``keep`` and ``frac``.

    Raises:
        ValueError: not such a file, or policies of another shape.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != FORMAT:
                raise ValueError(f"{path}: not an n2n policy file")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None
    try:
        keep.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("keep.")})
        frac.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("frac.")})
    except RuntimeError as e:
        raise ValueError(f"{path}: policies of another shape ({str(e)[:120]})") from None
