"""REINFORCE: an LSTM controller that learns a policy over the space by policy gradient.

The controller (as in ENAS / NASNet's RL search) emits one categorical decision per dimension,
in the space's order, feeding the embedding of each decision into the next step. Integer and
float dimensions are discretised into a few levels (exact values for small integer ranges,
log-spaced levels for log-scaled dimensions) and decoded back inside the space.

The strategy keeps no history of its own: the controller is rebuilt by replaying the updates
over every COMPLETE trial in trial-number order, whoever proposed it, so a resumed run or a
second worker continues the same search; a cached replay is extended while it stays a prefix.

Rewards are "larger is better" and scale-free: each trial's objective values are normalised by
the ranges observed up to that trial, scalarised with an augmented Chebyshev weight drawn from
``(seed, trial number)`` (ParEGO's scalarisation; one objective reduces to the value itself),
and the reward is the trial's rank among all trials measured up to it, in [0, 1]. Infeasible
trials rank below every feasible one (and among themselves by total violation). With several
objectives the output layer has one head per objective, mixed by the trial's weight, so the
controller learns a different part of the front for each preference.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective
from nas.search.space import Params, Space
from nas.search.strategies._base import Strategy, completed, register_strategy, violations_of

if TYPE_CHECKING:
    import torch

#: augmented Chebyshev coefficient (ParEGO's rho)
RHO = 0.05
#: most draws from the policy while they hit candidates already measured
N_DRAWS = 16
#: trials between snapshots of the replay, and snapshots kept
SNAPSHOT_EVERY, N_SNAPSHOTS = 16, 4
_SALT_INIT, _SALT_DRAW, _SALT_WEIGHT = 11, 12, 13

#: one COMPLETE trial as the replay sees it: number, decisions, signed values, total violation
Key = tuple[int, tuple[int, ...], tuple[float, ...], float]
Term = tuple[tuple[int, ...], np.ndarray, float]  # decisions, Chebyshev weight, advantage


def _levels(dist: Any, bins: int) -> list[Any]:
    """The values a dimension's decision chooses among (at most ``bins`` for numbers)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        grid = list(range(dist.low, dist.high + 1, dist.step))
        if len(grid) <= bins:
            return grid
    lo, hi = float(dist.low), float(dist.high)
    raw = np.geomspace(lo, hi, bins) if dist.log else np.linspace(lo, hi, bins)
    if not dist.log and dist.step is not None:
        raw = lo + np.round((raw - lo) / dist.step) * dist.step
    vals = np.clip(raw, lo, hi)
    if isinstance(dist, IntDistribution):
        return sorted({round(float(v)) for v in vals})
    return sorted({float(v) for v in vals})


def _nearest(dist: Any, levels: list[Any], value: Any) -> int:
    """Index of the level nearest to ``value`` (log scale for log dimensions)."""
    if isinstance(dist, CategoricalDistribution):
        return int(dist.to_internal_repr(value))
    f: Callable[[float], float] = math.log if dist.log else float
    x = f(float(value))
    return int(np.argmin([abs(f(float(v)) - x) for v in levels]))


class _Controller:
    """An LSTM cell with an input embedding and an output head per decision.

    One candidate at a time (batch-1 products never wake a BLAS thread pool, which on a busy
    machine costs more than the arithmetic); Adam in numpy (torch.optim imports torch._dynamo).

    Args:
        sizes: number of choices of each decision, in order.
        n_obj: number of objectives: one output head each, mixed by the Chebyshev weight.
        hidden: LSTM width (also the embedding width).
        lr: Adam learning rate.
        bound: logits are squashed into ``[-bound, bound]`` (ENAS's tanh constant).
        seed: seed of the initial weights.
    """

    def __init__(
        self, sizes: Sequence[int], n_obj: int, hidden: int, lr: float, bound: float, seed: int
    ) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        d, k, h = len(sizes), max(sizes), hidden

        def init(*shape: int) -> torch.Tensor:
            return torch.empty(*shape).uniform_(-0.1, 0.1, generator=g).requires_grad_()

        self.start, self.w_ih, self.w_hh = init(h), init(4 * h, h), init(4 * h, h)
        self.b, self.emb = init(4 * h), init(d, k, h)
        self.w_out, self.b_out = init(n_obj, d, k, h), init(n_obj, d, k)
        self.mask = torch.arange(k)[None, :] < torch.tensor(list(sizes))[:, None]
        self.params = [self.start, self.w_ih, self.w_hh, self.b, self.emb, self.w_out, self.b_out]
        zeros = [np.zeros(p.shape, np.float32) for p in self.params]
        self.moments = [(z, z.copy()) for z in zeros]
        self.lr, self.bound, self.steps = lr, bound, 0

    def _walk(
        self, weight: Sequence[float], choose: Callable[[int, torch.Tensor], int]
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Run the decisions in order; ``choose(i, log_probs)`` picks decision ``i``.

        Returns:
            ``(picks, log_prob, entropy)``: the decisions and two scalar tensors.
        """
        import torch

        hid = cell = self.start.new_zeros(self.start.shape)
        x, w = self.start, torch.tensor(list(weight), dtype=hid.dtype)
        log_prob, entropy, picks = hid.new_zeros(()), hid.new_zeros(()), []
        for i in range(len(self.mask)):
            gi, gf, gg, go = (self.w_ih @ x + self.w_hh @ hid + self.b).chunk(4)
            cell = torch.sigmoid(gf) * cell + torch.sigmoid(gi) * torch.tanh(gg)
            hid = torch.sigmoid(go) * torch.tanh(cell)
            z = w @ (self.w_out[:, i] @ hid + self.b_out[:, i])
            logits = (self.bound * torch.tanh(z / self.bound)).masked_fill(~self.mask[i], -1e4)
            logp = torch.log_softmax(logits, dim=-1)
            idx = choose(i, logp)
            log_prob = log_prob + logp[idx]
            entropy = entropy - (logp.exp() * logp).sum()
            x = self.emb[i, idx]
            picks.append(idx)
        return picks, log_prob, entropy

    def sample(
        self, weight: Sequence[float], temperature: float, gen: torch.Generator
    ) -> tuple[int, ...]:
        """Draw one decision tuple for the Chebyshev ``weight`` (logits / ``temperature``)."""
        import torch

        def choose(i: int, logp: torch.Tensor) -> int:
            return int(torch.multinomial(torch.softmax(logp / temperature, -1), 1, generator=gen))

        with torch.no_grad():
            picks, _, _ = self._walk(weight, choose)
        return tuple(picks)

    def step(self, batch: Sequence[Term], entropy_bonus: float) -> None:
        """One Adam step of REINFORCE on ``(decisions, weight, advantage)`` terms.

        Raises each tuple's log-probability in proportion to its advantage, plus
        ``entropy_bonus`` times the policy's entropy.
        """
        import torch

        with torch.enable_grad():
            loss = self.start.new_zeros(())
            for picks, weight, adv in batch:
                _, log_prob, entropy = self._walk(weight.tolist(), _replaying(picks))
                loss = loss - (adv * log_prob + entropy_bonus * entropy) / len(batch)
            grads = torch.autograd.grad(loss, self.params)
        self._adam([g.numpy() for g in grads])

    def _adam(self, grads: Sequence[np.ndarray], b1: float = 0.9, b2: float = 0.999) -> None:
        """Adam (Kingma & Ba), in place on the weights."""
        self.steps += 1
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        for p, g, (m, v) in zip(self.params, grads, self.moments, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            w = p.detach().numpy()
            w -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def _replaying(picks: Sequence[int]) -> Callable[[int, Any], int]:
    """A ``choose`` for :meth:`_Controller._walk` that repeats the given decisions."""
    return lambda i, _: picks[i]


@dataclass
class _Replay:
    """The controller after replaying the updates of ``keys`` (a prefix of the study's)."""

    controller: _Controller
    baseline: float = 0.5
    keys: list[Key] = field(default_factory=list)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@register_strategy("reinforce")
class ReinforceStrategy(Strategy):
    """REINFORCE with an LSTM controller and a moving-average baseline (ENAS-style).

    Args:
        space: the task's search space.
        objectives: what to optimise; several are scalarised with a random Chebyshev weight
            per trial.
        seed: seed of the initial weights and of every draw.
        constrained: whether trials carry constraint violations.
        lr: Adam learning rate of the controller.
        hidden: width of the LSTM and of the decision embeddings.
        entropy: weight of the entropy bonus; ``None``: 0 for one objective, 0.1 for several
            (the policy must keep a spread of the front, not one point).
        baseline_decay: decay of the exponential moving-average baseline, in [0, 1).
        temperature: proposals are drawn with the logits divided by this (below 1 exploits
            what the policy has learnt; the updates use the policy itself).
        bins: levels a non-categorical dimension is discretised into.
        update_every: trials per policy-gradient step (1: a step after every trial).
        n_startup_trials: uniformly random proposals before the controller is used.
        tanh_constant: logits are squashed into ``[-c, c]`` so the policy keeps exploring.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        lr: float = 0.02,
        hidden: int = 48,
        entropy: float | None = None,
        baseline_decay: float = 0.8,
        temperature: float = 0.5,
        bins: int = 8,
        update_every: int = 1,
        n_startup_trials: int = 0,
        tanh_constant: float = 2.5,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        if entropy is None:
            entropy = 0.0 if len(self.objectives) == 1 else 0.1
        _check(0 < lr <= 1, f"lr={lr}: give a learning rate in (0, 1], e.g. 0.02")
        _check(hidden >= 1, f"hidden={hidden}: give a positive LSTM width, e.g. 48")
        _check(entropy >= 0, f"entropy={entropy}: give a non-negative bonus, e.g. 0 or 0.1")
        _check(0 <= baseline_decay < 1, f"baseline_decay={baseline_decay}: give one in [0, 1)")
        _check(temperature > 0, f"temperature={temperature}: give a positive one, e.g. 0.5")
        _check(bins >= 2, f"bins={bins}: give at least 2 levels per numeric dimension, e.g. 8")
        _check(update_every >= 1, f"update_every={update_every}: give 1 or more trials per step")
        _check(n_startup_trials >= 0, f"n_startup_trials={n_startup_trials}: give 0 or more")
        _check(tanh_constant > 0, f"tanh_constant={tanh_constant}: give a positive one, e.g. 2.5")
        self.lr, self.hidden, self.entropy, self.tanh_constant = lr, hidden, entropy, tanh_constant
        self.baseline_decay, self.temperature = baseline_decay, temperature
        self.update_every, self.n_startup_trials = update_every, n_startup_trials
        self._levels = [_levels(d, bins) for d in self.space.values()]
        self._replay: _Replay | None = None
        self._snapshots: list[_Replay] = []  # each a prefix of the next, the latest last
        self._lock = threading.Lock()  # optuna's n_jobs > 1 shares one sampler between threads

    # -- proposing --------------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        """Replay the study into the controller, then draw a candidate not measured yet."""
        keys = self._keys(study)
        seen = self._seen(study, trial)
        rng = self.rng(trial, _SALT_DRAW)
        if len(keys) < self.n_startup_trials:
            draws = [tuple(int(rng.integers(len(lv))) for lv in self._levels)]
        else:
            import torch

            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            weight = self._weights(trial.number).tolist()
            with self._lock:
                controller = self._update(keys).controller
                draws = [controller.sample(weight, self.temperature, gen)]
                while draws[-1] in seen and len(draws) < N_DRAWS:
                    draws.append(controller.sample(weight, self.temperature, gen))
        return self._decode(self._novel(draws[-1], seen, rng))

    def _novel(
        self, draw: tuple[int, ...], seen: set[tuple[int, ...]], rng: np.random.Generator
    ) -> tuple[int, ...]:
        """``draw``, or when it was measured already, a mutant of it that was not (if found)."""
        out = list(draw)
        for _ in range(4 * N_DRAWS):
            if tuple(out) not in seen:
                return tuple(out)
            j = int(rng.integers(len(out)))
            out[j] = int(rng.integers(len(self._levels[j])))
        return draw

    def _decode(self, decisions: Sequence[int]) -> Params:
        pairs = zip(self.space, self._levels, decisions, strict=True)
        return {name: levels[i] for name, levels, i in pairs}

    def _encode(self, params: dict[str, Any]) -> tuple[int, ...] | None:
        """The decisions of a candidate, or None if it lies outside the space."""
        try:
            return tuple(
                _nearest(d, lv, params[n])
                for (n, d), lv in zip(self.space.items(), self._levels, strict=True)
            )
        except (KeyError, ValueError, TypeError):
            return None

    def _seen(self, study: Study, trial: FrozenTrial) -> set[tuple[int, ...]]:
        """Decisions of every candidate measured or in flight (failed ones may be retried)."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        out = set()
        for t in study.get_trials(deepcopy=False, states=states):
            enc = self._encode(t.params) if t.number != trial.number else None
            if enc is not None:
                out.add(enc)
        return out

    # -- replaying the study ----------------------------------------------------------------
    def _keys(self, study: Study) -> list[Key]:
        """One key per COMPLETE trial inside the space, in trial-number order."""
        signs = self.signs()
        out: list[Key] = []
        for t in completed(study):
            enc = self._encode(t.params)
            if enc is None:
                continue
            values = tuple(float(v) for v in np.asarray(t.values, dtype=float) * signs)
            violation = sum(max(v, 0.0) for v in violations_of(t).values())
            out.append((t.number, enc, values, violation))
        return out

    def _fresh(self) -> _Replay:
        seed = int(np.random.SeedSequence([self.seed, _SALT_INIT]).generate_state(1)[0])
        sizes = [len(lv) for lv in self._levels]
        m, c = len(self.objectives), self.tanh_constant
        return _Replay(_Controller(sizes, m, self.hidden, self.lr, c, seed))

    def _restore(self, keys: list[Key]) -> _Replay:
        """The cached replay if ``keys`` extend it, else the latest snapshot they extend.

        Trials that finish out of order (several workers) only invalidate the last few
        updates, so replay restarts from a recent snapshot rather than from scratch.
        """
        replay = self._replay
        if replay is not None and keys[: len(replay.keys)] == replay.keys:
            return replay
        while self._snapshots and keys[: len(self._snapshots[-1].keys)] != self._snapshots[-1].keys:
            self._snapshots.pop()
        return copy.deepcopy(self._snapshots[-1]) if self._snapshots else self._fresh()

    def _update(self, keys: list[Key]) -> _Replay:
        """The controller brought up to date with ``keys`` (replayed again where they diverge)."""
        replay = self._restore(keys)
        k, d = self.update_every, self.baseline_decay
        for start in range(len(replay.keys), len(keys) // k * k, k):
            batch: list[Term] = []
            for i in range(start, start + k):
                weight = self._weights(keys[i][0])
                reward = self._reward(keys[: i + 1], weight)
                batch.append((keys[i][1], weight, reward - replay.baseline))
                replay.baseline = d * replay.baseline + (1 - d) * reward
            replay.controller.step(batch, self.entropy)
            replay.keys = keys[: start + k]
            last = len(self._snapshots[-1].keys) if self._snapshots else 0
            if len(replay.keys) - last >= SNAPSHOT_EVERY:
                self._snapshots = [*self._snapshots[1 - N_SNAPSHOTS :], copy.deepcopy(replay)]
        self._replay = replay
        return replay

    def _weights(self, number: int) -> np.ndarray:
        """The Chebyshev weight of trial ``number``: uniform on the simplex ([1] for one)."""
        m = len(self.objectives)
        if m == 1:
            return np.ones(1)
        return np.random.default_rng([self.seed, number, _SALT_WEIGHT]).dirichlet(np.ones(m))

    def _reward(self, prefix: Sequence[Key], weight: np.ndarray) -> float:
        """Reward of the last trial of ``prefix``: its rank among the prefix, in [0, 1].

        Every trial of the prefix is scored with ``weight`` on objectives normalised by the
        prefix's ranges (augmented Chebyshev); infeasible trials score below every feasible one.
        """
        n = len(prefix)
        if n == 1:
            return 0.5
        values = np.array([key[2] for key in prefix])
        violation = np.array([key[3] for key in prefix])
        lo, hi = values.min(axis=0), values.max(axis=0)
        gap = (hi - values) / np.where(hi > lo, hi - lo, 1.0)  # 0 = best seen, 1 = worst
        wd = weight * gap
        score = -(wd.max(axis=1) + RHO * wd.sum(axis=1))
        score = np.where(violation > 0, -(2.0 + RHO) - np.log1p(violation), score)
        below = float(np.sum(score < score[-1]))
        ties = float(np.sum(score == score[-1])) - 1.0
        return (below + 0.5 * ties) / (n - 1)
