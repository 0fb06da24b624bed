"""EvoNorm: evolve normalization-activation layers on MNIST-5k, then compare the best evolved
layer with BN-ReLU, GN-ReLU, EvoNorm-B0 and EvoNorm-S0 on a held-back architecture.

Usage::

    python bench/evonorm.py [--budget 400] [--search-minutes M] [--seeds 3] [--epochs 3]
                            [--max-minutes M] [--report-only]

1. ``search``: ``nas evonorm search --data mnist`` through the library: K = 2 architectures
   (resnet20 and mobilenet_tiny, width 0.25, 14×14 inputs), aging evolution (population 12,
   tournament 4), ``--budget`` candidates. The study (``build/bench/evonorm/search.db``) is the
   resumable state; ``search.json`` is written once the budget is met (rejections by protocol,
   evaluated, the best layers as formulas, the chosen evolved layer).
2. ``heldback``: one result file per (layer, batch size, seed): vgg11 (width 0.25, 16×16 inputs;
   no part in the search) with the layer, trained ``--epochs`` epochs on the first 1,000
   training images at batch 2, 8 and 64 (SGD, lr 0.1 × batch / 64, cosine), test top-1 on the
   1,000 test images. The evolved layer runs once the search is done.

Target: the evolved layer is not equivalent to a reference layer, beats GN-ReLU at batch <= 8
and is within 1 point of BN-ReLU at batch 64 (means over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from _common import (
    RESULTS,
    ROOT,
    Deadline,
    describe_machine,
    fmt_mean_std,
    git_commit,
    machine,
    md_table,
    mean_std,
    now_iso,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

NAME = "evonorm"
WHERE = RESULTS / NAME
DB = ROOT / "build" / "bench" / "evonorm" / "search.db"
STUDY = "bench-evonorm"
REFERENCES = ("bn-relu", "gn-relu", "b0", "s0")
BATCHES = (2, 8, 64)
HELD_BACK = {"arch": "vgg11", "width": 0.25, "input_size": 16, "images": 1000}


def search_job(budget: int) -> Any:
    from nas.compress.evonorm_job import EvoNormSearch

    return EvoNormSearch(
        data="mnist",
        budget=budget,
        storage=f"sqlite:///{DB}",
        study=STUDY,
        out=str(ROOT / "build" / "bench" / "evonorm" / "out"),
        strategy_options={"population_size": 12, "sample_size": 4},
    )


def run_search_phase(budget: int, minutes: float) -> dict[str, Any] | None:
    """Run (resume) the search for at most ``minutes``; the summary once the budget is met."""
    import torch

    from nas.compress.evonorm_job import best_layers, summary
    from nas.search.job import run_search

    torch.set_num_threads(1)
    DB.parent.mkdir(parents=True, exist_ok=True)
    cfg = search_job(budget).search_config()
    t0 = time.monotonic()
    result = run_search(dataclasses.replace(cfg, timeout=60.0 * minutes), handle_signals=True)
    print(f"search: {result.evaluated}/{budget} ({result.reason})", flush=True)
    best = best_layers(result.study, top=10)
    row: dict[str, Any] = {
        "kind": "search",
        "evaluated_so_far": result.evaluated,
        "budget": budget,
        "counts": summary(result.study),
        "best": best,
        "seconds_this_run": round(time.monotonic() - t0, 1),
    }
    if not result.complete:
        write_json_atomic(ROOT / "build" / "bench" / "evonorm" / "progress.json", row)
        return None
    evolved = [b for b in best if b["equivalent_to"] is None]
    row["chosen"] = evolved[0] if evolved else None
    return row


def heldback(layer: Any, batch: int, seed: int, epochs: int) -> dict[str, Any]:
    import torch

    from nas.compress.evonorm_train import Diverged, accuracy, fit, tensors, zoo_model

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    hb = HELD_BACK
    net = zoo_model(hb["arch"], layer, width=hb["width"], input_size=hb["input_size"])
    train = tensors("mnist", "train", net, int(hb["images"]))
    test = tensors("mnist", "test", net)
    steps = epochs * -(-int(hb["images"]) // batch)
    t0 = time.monotonic()
    row: dict[str, Any] = {"steps": steps, "lr": 0.1 * batch / 64}
    try:
        fit(net, train, steps=steps, batch=batch, lr=0.1 * batch / 64, seed=seed)
        row["test_top1"] = accuracy(net, test)
    except Diverged as e:
        row["diverged"] = str(e)
    if row.get("test_top1") is not None and row["test_top1"] != row["test_top1"]:
        row["diverged"], row["test_top1"] = "NaN outputs", None
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def _chosen() -> dict[str, Any] | None:
    path = WHERE / "search.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("chosen")


def jobs(seeds: int) -> list[tuple[str, int, int]]:
    layers = [*REFERENCES, "evolved"]
    return [(lay, b, s) for s in range(seeds) for b in (64, 8, 2) for lay in layers]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--search-minutes", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no job after")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    deadline, failed = Deadline(args.max_minutes), 0
    if not args.report_only and not (WHERE / "search.json").exists():
        minutes = args.search_minutes
        if args.max_minutes is not None:
            minutes = min(minutes, args.max_minutes)
        row = run_search_phase(args.budget, minutes)
        if row is not None:
            row |= {"date": now_iso(), "git_commit": git_commit(), "machine": machine()}
            write_json_atomic(WHERE / "search.json", row)
    for layer, batch, seed in [] if args.report_only else jobs(args.seeds):
        chosen = _chosen()
        path = WHERE / f"heldback-{layer}-b{batch}-e{args.epochs}-seed{seed}.json"
        if path.exists() or deadline.passed() or (layer == "evolved" and chosen is None):
            continue
        print(f"[{now_iso()}] {path.stem} ...", flush=True)
        graph = chosen["graph"] if layer == "evolved" and chosen else layer
        try:
            row = {"kind": "heldback", "layer": layer, "batch": batch, "seed": seed}
            row |= {"epochs": args.epochs, "graph": graph, **HELD_BACK}
            row |= heldback(graph, batch, seed, args.epochs)
            row |= {"date": now_iso(), "git_commit": git_commit(), "machine": machine()}
            write_json_atomic(path, row)
        except Exception:
            traceback.print_exc()
            failed += 1
        report(args.seeds)
    report(args.seeds)
    return 1 if failed else 0


NOTES = """
## Notes (first run, 2026-11-29)

- The search met its 400-candidate budget in a few minutes because most random graphs are
  rejected at once: their output does not depend on x (invalid), or they are unstable, NaN,
  near chance, or pruned by the median pruner at the first report. Only 8 candidates were
  fully evaluated, fewer than the population of 12, so aging evolution never left its random
  phase: the "evolved" layer is the best *random* survivor, a linear rescaling of x. Next: a
  budget of several thousand (invalid candidates cost ~0.1 s), a population of 4-6 for the
  first run, a pruner with more startup trials (it prunes at the first report), and
  rejecting candidates with no aggregate node (no normalisation) as `quality` up front.
- The held-back vgg11 at 16x16 (1x1 spatial in its last stage) does not train with GN-ReLU or
  S0 at lr 0.1 x batch/64 in 3 epochs (chance), and B0 diverged: the held-back setup, not the
  layers, is at fault there; next: a ResNet-32 or the zoo's MobileNetV2 at 28x28 as the
  held-back network, and a learning-rate check per layer at batch 64 first.
- Batch 2 was not reached before the time limit; `python bench/evonorm.py` resumes.
"""


def _mean(rows: list[dict[str, Any]], layer: str, batch: int) -> float | None:
    xs = [r["test_top1"] for r in rows if r["layer"] == layer and r["batch"] == batch]
    xs = [x for x in xs if x is not None]
    return mean_std(xs)[0] if xs else None


def report(seeds: int) -> None:
    rs = list(read_results(WHERE))
    search = next((r for r in rs if r.get("kind") == "search"), None)
    held = [r for r in rs if r.get("kind") == "heldback"]
    machines = sorted({describe_machine(r["machine"]) for r in rs}) or [describe_machine(machine())]
    text = (
        "# EvoNorm: evolved normalization-activation layers\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(rs)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}; one torch thread, niced.\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in rs})) or '–'}\n"
        "- Search: MNIST-5k, K = 2 architectures (resnet20 and mobilenet_tiny, width 0.25, "
        "14×14), aging evolution, seed 0. Held back: vgg11 width 0.25 at 16×16, first 1,000 "
        "training images, test top-1 (%) on the 1,000 test images, mean ± std over seeds "
        "0..N-1.\n\n"
    )
    text += _search_text(search) + _held_text(held, seeds, search) + NOTES
    write_text_atomic(RESULTS / f"{NAME}.md", text)


def _search_text(search: dict[str, Any] | None) -> str:
    progress = ROOT / "build" / "bench" / "evonorm" / "progress.json"
    if search is None and progress.exists():
        search = json.loads(progress.read_text())
        head = f"## Search (in progress: {search['evaluated_so_far']} of {search['budget']})\n\n"
    elif search is None:
        return "## Search\n\nnot run yet\n\n"
    else:
        head = f"## Search ({search['evaluated_so_far']} candidates sampled)\n\n"
    c = search["counts"]
    text = head + md_table(list(c), [[str(v) for v in c.values()]]) + "\n"
    rows = [
        [
            str(b["trial"]),
            f"`{b['formula']}`",
            b["equivalent_to"] or "new",
            *(f"{v:.1f}" for k, v in b.items() if k.startswith("top1@")),
        ]
        for b in search["best"][:6]
    ]
    archs = [k for k in (search["best"][0] if search["best"] else {}) if k.startswith("top1@")]
    text += md_table(["trial", "layer (y · γ + β)", "equivalent to", *archs], rows) + "\n"
    return text


def _held_text(held: list[dict[str, Any]], seeds: int, search: dict[str, Any] | None) -> str:
    if not held:
        return ""
    chosen = search.get("chosen") if search else None
    text = "## Held-back architecture\n\n"
    if chosen:
        text += f"Evolved layer: trial {chosen['trial']}, `{chosen['formula']}`.\n\n"
    rows = []
    for layer in [*REFERENCES, "evolved"]:
        row = [layer]
        for b in BATCHES:
            rr = [r for r in held if r["layer"] == layer and r["batch"] == b]
            xs = [r["test_top1"] for r in rr if r.get("test_top1") is not None]
            div = sum("diverged" in r for r in rr)
            cell = fmt_mean_std(xs, 2, seeds) if xs else "–"
            row.append(cell + (f", {div} diverged" if div else ""))
        rows.append(row)
    text += md_table(["layer", *(f"batch {b}" for b in BATCHES)], rows) + "\n"
    ev = {b: _mean(held, "evolved", b) for b in BATCHES}
    gn = {b: _mean(held, "gn-relu", b) for b in BATCHES}
    bn64 = _mean(held, "bn-relu", 64)
    checks = []
    for b in (2, 8):
        if ev[b] is not None and gn[b] is not None:
            ok = ev[b] > gn[b]  # type: ignore[operator]
            checks.append(f"- batch {b}: evolved {ev[b]:.2f} vs GN-ReLU {gn[b]:.2f} (target: "
                          f"beat it): {'PASS' if ok else 'MISS'}")  # fmt: skip
    if ev[64] is not None and bn64 is not None:
        ok = ev[64] >= bn64 - 1.0
        checks.append(f"- batch 64: evolved {ev[64]:.2f} vs BN-ReLU {bn64:.2f} (target: within "
                      f"1 point): {'PASS' if ok else 'MISS'}")  # fmt: skip
    if chosen:
        checks.append("- evolved layer not equivalent to BN-ReLU, GN-ReLU, B0, S0: PASS")
    return text + "\n".join(checks) + "\n"


if __name__ == "__main__":
    sys.exit(main())
