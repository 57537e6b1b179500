"""The driver's phases, one function each, on an opened run (`context.open_run`). Each runs in
`RunStore.phase`'s skeleton (skipped when done, timed, marked done when it ends) and talks to
the others only through files in the run directory."""
from reclaif.pipeline.phases.context import Run, Samplers, open_run
from reclaif.pipeline.phases.evidence import evidence
from reclaif.pipeline.phases.generation import base_examples, evaluate, sample, sampling_prompts
from reclaif.pipeline.phases.judging import judge, pairs
from reclaif.pipeline.phases.training import teacher_data, train

__all__ = ["Run", "Samplers", "base_examples", "evaluate", "evidence", "judge", "open_run",
           "pairs", "sample", "sampling_prompts", "teacher_data", "train"]
