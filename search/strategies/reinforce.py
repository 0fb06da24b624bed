"""REINFORCE: an LSTM controller that learns a policy over the space by policy gradient.

The controller (as in ENAS / NASNet's RL search) emits one categorical decision per dimension,
in the space's order, feeding the embedding of each decision into the next step. Integer and
float dimensions are discretised into a few levels (exact values for small integer ranges,
log-spaced levels for log-scaled dimensions) and decoded back inside the space.

The strategy keeps no history of its own. Its state is rebuilt by replaying the policy-gradient
updates over every COMPLETE trial in trial-number order, whoever proposed it, so a resumed run
or a second worker continues the same search. The controller is cached in memory and only the
new trials are applied while the cached trials are a prefix of the study's.

Rewards are made "larger is better" and scale-free: each trial's objective values are
normalised by the ranges observed so far, scalarised with an augmented Chebyshev weight drawn
from ``(seed, trial number)`` (ParEGO's scalarisation; one objective reduces to the value
itself), and the reward is the trial's rank among all trials measured up to it. Infeasible
trials rank below every feasible one (and among themselves by total violation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
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
_SALT_INIT, _SALT_DRAW, _SALT_WEIGHT = 11, 12, 13

Key = tuple[int, tuple[int, ...], tuple[float, ...], float]  # number, decisions, values, violation


def _levels(dist: Any, bins: int) -> list[Any]:
    """The values a dimension's decision chooses among (at most ``bins`` for numbers)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    lo, hi = float(dist.low), float(dist.high)
    step = dist.step if not dist.log else None
    if isinstance(dist, IntDistribution) and not dist.log:
        grid = list(range(dist.low, dist.high + 1, dist.step))
        if len(grid) <= bins:
            return grid
    raw = np.geomspace(lo, hi, bins) if dist.log else np.linspace(lo, hi, bins)
    if step is not None:
        raw = lo + np.round((raw - lo) / step) * step
    vals = np.clip(raw, lo, hi)
    if isinstance(dist, IntDistribution):
        return sorted({int(round(v)) for v in vals})
    return sorted({float(v) for v in vals})


def _nearest(dist: Any, levels: list[Any], value: Any) -> int:
    """Index of the level nearest to ``value`` (log scale for log dimensions)."""
    if isinstance(dist, CategoricalDistribution):
        return int(dist.to_internal_repr(value))
    f: Callable[[float], float] = math.log if dist.log else float
    x = f(float(value))
    return int(np.argmin([abs(f(float(v)) - x) for v in levels]))


class _Controller:
    """An LSTM cell with one output head and one input embedding per decision.

    Works on one candidate at a time: tiny batch-1 products never start a BLAS thread pool,
    which on a busy machine costs more than the arithmetic.

    Args:
        sizes: number of choices of each decision, in order.
        hidden: LSTM width (also the embedding width).
        lr: Adam learning rate.
        bound: logits are squashed into ``[-bound, bound]`` (ENAS's tanh constant).
        seed: seed of the initial weights.
    """

    def __init__(
        self, sizes: Sequence[int], hidden: int, lr: float, bound: float, seed: int
    ) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        d, k, h = len(sizes), max(sizes), hidden

        def init(*shape: int) -> torch.Tensor:
            return torch.empty(*shape).uniform_(-0.1, 0.1, generator=g).requires_grad_()

        self.start, self.w_ih, self.w_hh, self.b = init(h), init(4 * h, h), init(4 * h, h), init(4 * h)
        self.emb, self.w_out, self.b_out = init(d, k, h), init(d, k, h), init(d, k)
        self.mask = torch.arange(k)[None, :] < torch.tensor(list(sizes))[:, None]
        self.params = [self.start, self.w_ih, self.w_hh, self.b, self.emb, self.w_out, self.b_out]
        self.moments = [(np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32)) for p in self.params]
        self.lr, self.bound, self.steps = lr, bound, 0

    def _walk(
        self, choose: Callable[[int, torch.Tensor], int]
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Run the decisions in order; ``choose(i, log_probs)`` picks decision ``i``.

        Returns:
            ``(picks, log_prob, entropy)``: the decisions and two scalar tensors.
        """
        import torch

        hid = cell = self.start.new_zeros(self.start.shape)
        x, log_prob, entropy, picks = self.start, hid.new_zeros(()), hid.new_zeros(()), []
        for i in range(len(self.mask)):
            gi, gf, gg, go = (self.w_ih @ x + self.w_hh @ hid + self.b).chunk(4)
            cell = torch.sigmoid(gf) * cell + torch.sigmoid(gi) * torch.tanh(gg)
            hid = torch.sigmoid(go) * torch.tanh(cell)
            logits = self.bound * torch.tanh((self.w_out[i] @ hid + self.b_out[i]) / self.bound)
            logits = logits.masked_fill(~self.mask[i], -1e4)
            logp = torch.log_softmax(logits, dim=-1)
            idx = choose(i, logp)
            log_prob = log_prob + logp[idx]
            entropy = entropy - (logp.exp() * logp).sum()
            x = self.emb[i, idx]
            picks.append(idx)
        return picks, log_prob, entropy

    def sample(self, gen: torch.Generator) -> tuple[int, ...]:
        """Draw one decision tuple from the policy."""
        import torch

        with torch.no_grad():
            picks, _, _ = self._walk(
                lambda i, logp: int(torch.multinomial(logp.exp(), 1, generator=gen))
            )
        return tuple(picks)

    def step(self, decisions: Sequence[tuple[int, ...]], adv: Sequence[float], ent: float) -> None:
        """One Adam step of REINFORCE: raise the log-probability of each tuple by its advantage."""
        import torch

        with torch.enable_grad():
            loss = self.start.new_zeros(())
            for picks, a in zip(decisions, adv, strict=True):
                _, log_prob, entropy = self._walk(lambda i, logp, p=picks: p[i])  # type: ignore[misc]
                loss = loss - (a * log_prob + ent * entropy) / len(decisions)
            grads = torch.autograd.grad(loss, self.params)
        self._adam(grads)

    def _adam(self, grads: Sequence[torch.Tensor], b1: float = 0.9, b2: float = 0.999) -> None:
        """Adam (Kingma & Ba) in numpy on the weights' memory.

        Not torch.optim: its first use imports torch._dynamo (seconds), and torch's threaded
        ``sqrt`` stalls on a busy machine.
        """
        self.steps += 1
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        for p, g, (m, v) in zip(self.params, grads, self.moments, strict=True):
            gn = g.numpy()
            m *= b1
            m += (1 - b1) * gn
            v *= b2
            v += (1 - b2) * gn * gn
            w = p.detach().numpy()
            w -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


@dataclass
class _Replay:
    """The controller after replaying the updates of ``keys`` (a prefix of the study)."""

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
        entropy: weight of the entropy bonus (keeps the policy exploring).
        baseline_decay: decay of the exponential moving-average baseline, in [0, 1).
        bins: levels a non-categorical dimension is discretised into.
        update_every: trials per policy-gradient step (1: a step after every trial).
        n_startup_trials: uniformly random proposals before the controller is used.
        tanh_constant: logits are squashed into ``[-c, c]`` so the policy never stops exploring.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        lr: float = 0.1,
        hidden: int = 32,
        entropy: float = 0.0,
        baseline_decay: float = 0.8,
        bins: int = 8,
        update_every: int = 1,
        n_startup_trials: int = 0,
        tanh_constant: float = 2.5,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        _check(0 < lr <= 1, f"lr={lr}: give a learning rate in (0, 1], e.g. 0.1")
        _check(hidden >= 1, f"hidden={hidden}: give a positive LSTM width, e.g. 32")
        _check(entropy >= 0, f"entropy={entropy}: give a non-negative bonus, e.g. 0.0 or 0.01")
        _check(
            0 <= baseline_decay < 1,
            f"baseline_decay={baseline_decay}: give a decay in [0, 1), e.g. 0.8",
        )
        _check(bins >= 2, f"bins={bins}: give at least 2 levels per numeric dimension, e.g. 8")
        _check(update_every >= 1, f"update_every={update_every}: give 1 or more trials per step")
        _check(n_startup_trials >= 0, f"n_startup_trials={n_startup_trials}: give 0 or more")
        _check(tanh_constant > 0, f"tanh_constant={tanh_constant}: give a positive bound, e.g. 2.5")
        self.lr, self.hidden, self.entropy = float(lr), int(hidden), float(entropy)
        self.baseline_decay, self.update_every = float(baseline_decay), int(update_every)
        self.n_startup_trials, self.tanh_constant = int(n_startup_trials), float(tanh_constant)
        self._levels = [_levels(d, bins) for d in self.space.values()]
        self._replay: _Replay | None = None

    # -- proposing --------------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        keys = self._keys(study)
        seen = self._seen(study, trial)
        rng = self.rng(trial, _SALT_DRAW)
        if len(keys) < self.n_startup_trials:
            draws = [tuple(int(rng.integers(len(lv))) for lv in self._levels)]
        else:
            import torch

            replay = self._update(keys)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            draws = [replay.controller.sample(gen)]
            while draws[-1] in seen and len(draws) < N_DRAWS:
                draws.append(replay.controller.sample(gen))
        return self._decode(self._novel(draws[-1], seen, rng))

    def _novel(
        self, draw: tuple[int, ...], seen: set[tuple[int, ...]], rng: np.random.Generator
    ) -> tuple[int, ...]:
        """``draw``, or when it was measured already, a mutant of it that was not (if any)."""
        out = list(draw)
        for _ in range(4 * N_DRAWS):
            if tuple(out) not in seen:
                return tuple(out)
            j = int(rng.integers(len(out)))
            out[j] = int(rng.integers(len(self._levels[j])))
        return draw

    def _decode(self, decisions: Sequence[int]) -> Params:
        names = list(self.space)
        return {n: self._levels[j][i] for j, (n, i) in enumerate(zip(names, decisions, strict=True))}

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
        return _Replay(_Controller(sizes, self.hidden, self.lr, self.tanh_constant, seed))

    def _update(self, keys: list[Key]) -> _Replay:
        """The cached controller brought up to date with ``keys`` (rebuilt if they diverge)."""
        replay = self._replay
        if replay is None or keys[: len(replay.keys)] != replay.keys:
            replay = self._fresh()
        k = self.update_every
        for start in range(len(replay.keys), len(keys) // k * k, k):
            advantages = []
            for i in range(start, start + k):
                reward = self._reward(keys[: i + 1])
                advantages.append(reward - replay.baseline)
                d = self.baseline_decay
                replay.baseline = d * replay.baseline + (1 - d) * reward
            batch = [key[1] for key in keys[start : start + k]]
            replay.controller.step(batch, advantages, self.entropy)
            replay.keys = keys[: start + k]
        self._replay = replay
        return replay

    def _weights(self, number: int) -> np.ndarray:
        """The Chebyshev weight of trial ``number`` (uniform on the simplex; [1] for one)."""
        m = len(self.objectives)
        if m == 1:
            return np.ones(1)
        rng = np.random.default_rng([self.seed, number, _SALT_WEIGHT])
        return rng.dirichlet(np.ones(m))

    def _reward(self, prefix: Sequence[Key]) -> float:
        """Reward of the last trial of ``prefix``: its rank among the prefix, in [0, 1].

        Every trial is scored with the last trial's Chebyshev weight on objectives normalised
        by the prefix's ranges; infeasible trials score below every feasible one.
        """
        n = len(prefix)
        if n == 1:
            return 0.5
        values = np.array([key[2] for key in prefix])
        violation = np.array([key[3] for key in prefix])
        lo, hi = values.min(axis=0), values.max(axis=0)
        gap = (hi - values) / np.where(hi > lo, hi - lo, 1.0)  # 0 = best seen, 1 = worst
        wd = self._weights(prefix[-1][0]) * gap
        score = -(wd.max(axis=1) + RHO * wd.sum(axis=1))
        score = np.where(violation > 0, -(2.0 + RHO) - np.log1p(violation), score)
        below = float(np.sum(score < score[-1]))
        ties = float(np.sum(score == score[-1])) - 1.0
        return (below + 0.5 * ties) / (n - 1)
