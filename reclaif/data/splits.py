"""A run's inputs as its config chooses them: the training prompts, the evaluation examples held
out from every training input, and the interaction windows evidence models and learned baselines
are fitted on. The driver opens a run with it; `reclaif eval --methods model:PATH` uses it to
check a run's checkpoint against the run's own inputs."""
from __future__ import annotations

from dataclasses import dataclass

from reclaif.config import DataConfig
from reclaif.data import load_examples, resolve_data_dir
from reclaif.data.heldout import HeldOut, check_held_out
from reclaif.data.interactions import fit_windows
from reclaif.errors import ReclaifError
from reclaif.records import Example


@dataclass
class RunSplits:
    """A run's inputs: `train` (SFT, sampling and DPO prompts), `evaluation` (held out from
    them and from `windows`), the held-out report, and `windows` (the interactions evidence
    models and learned baselines are fitted on: reclaif.data.interactions)."""

    train: list[Example]
    evaluation: list[Example]
    held: HeldOut
    windows: list[Example]


def run_splits(d: DataConfig) -> RunSplits:
    """A run's splits: `check_held_out` on the whole evaluation split against every training
    input, then the first `max_eval_examples` of what passed. The check is the same in both
    evidence modes, so a hybrid and a names-only run evaluate the same examples."""
    path = resolve_data_dir(d.path)
    train_all = load_examples(path, split=d.train_split)
    evaluation = load_examples(path, split=d.eval_split)
    train = train_all[:d.max_train_examples] if d.max_train_examples else train_all
    if not train or not evaluation:
        raise ReclaifError(f"{path}: {len(train)} '{d.train_split}' and {len(evaluation)} "
                           f"'{d.eval_split}' examples; both must be non-empty")
    windows = fit_windows(path, d.train_split, train_all)
    known = {ex.id for ex in train}
    inputs = train + [w for w in windows if w.id not in known]
    what = f"'{d.train_split}' (SFT, sampling, DPO)" + (
        f" + {len(windows):,} interaction windows (evidence, baselines)" if windows else "")
    # Held-out discipline: no evaluation example is in any SFT, sampling, DPO or fit input.
    held = check_held_out(inputs, evaluation, what=what)
    kept = held.kept[:d.max_eval_examples] if d.max_eval_examples else held.kept
    return RunSplits(train, kept, held, windows)
