"""`reclaif bench e2e`: one small driver run (the quickstart config, scaled down), reporting each
phase's share of the wall time — where an iteration's time goes, as ratios rather than seconds."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from reclaif.config_load import load_config
from reclaif.pipeline.driver import Driver


def run(*, quick: bool = False, as_json: bool = False) -> int:
    """Prints each phase's share of a small driver run's wall time."""

    n = 4 if quick else 16
    overrides = [f"data.max_train_examples={n}", f"data.max_eval_examples={n // 2}",
                 "dpo.iterations=1", "sft.epochs=1"]
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", overrides)
    with tempfile.TemporaryDirectory(prefix="reclaif-bench-e2e-") as tmp:
        t0 = time.time()
        Driver(cfg, Path(tmp) / "run").run()
        total = time.time() - t0
        timings = json.loads((Path(tmp) / "run" / "timings.json").read_text())
    shares = {k: round(v / total, 3) for k, v in timings.items()}
    result = {"train_prompts": n, "eval_prompts": n // 2, "phase_share_of_wall_time": shares,
              "unaccounted_share": round(1 - sum(shares.values()), 3)}
    print(json.dumps(result, indent=2) if as_json else
          "\n".join(f"{k:24s} {v:6.1%}" for k, v in shares.items()))
    return 0
