"""supernets/ builds networks with torch alone (a GPU machine for latency tables has no optuna)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
for name in ("optuna", "sklearn", "scipy", "pymoo", "torch_pruning"):
    sys.modules[name] = None  # any import of these now fails
from nas.supernets import load_supernet
for family in ("resnet50", "mobilenetv3"):
    net = load_supernet(family)
    sub = net.extract(net.smallest() | {"r": 128})
    assert sub(sub.example_input()).shape == (1, 1000)
from nas.supernets.nb201_net import nb201_network
cell = nb201_network("|skip_connect~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|avg_pool_3x3~2|")
assert cell(cell.example_input()).shape == (1, 10)
print("ok")
"""


def test_supernets_import_and_extract_without_optuna_or_sklearn() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
