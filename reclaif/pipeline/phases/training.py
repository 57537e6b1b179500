"""The training phases: the teacher's answers SFT distils, then SFT or a DPO iteration, in the
driver's process or through the configured launcher (`launch.mode`)."""
from __future__ import annotations

from typing import Any

from reclaif.atomic import atomic_write_jsonl, read_json
from reclaif.errors import PhaseError, ReclaifError
from reclaif.faults import maybe_fail
from reclaif.llm.models import load_tokenizer
from reclaif.pipeline.launcher import render_launch, run_launch
from reclaif.pipeline.phases.context import Run
from reclaif.pipeline.train_command import train_phase
from reclaif.prompts import render_recommender
from reclaif.recommender import fit_answered
from reclaif.run_layout import SFT, training_stage
from reclaif.teacher import make_teacher


def teacher_data(run: Run) -> None:
    """The teacher's answer to each SFT prompt (sft/teacher.jsonl)."""
    with run.store.phase("sft/teacher") as phase:
        if phase.done:
            return
        cfg = run.cfg
        examples = run.train[:cfg.sft.max_examples or None]
        teacher = make_teacher(cfg.teacher, run.items, run.top_k)
        # Each prompt fits sft.max_length with its answer (fewer candidates where needed), so
        # SFT trains the prompts evaluation shows, never one cut from the left.
        from reclaif.train.data import answer_tokens, prompt_tokens  # torch: only here

        tok = load_tokenizer(cfg.recommender.model, cfg.recommender.cache_dir or None)
        examples, responses = fit_answered(
            examples, run.items, run.top_k, teacher.respond_many,
            lambda p: len(prompt_tokens(tok, p)), lambda a: len(answer_tokens(tok, a)),
            cfg.sft.max_length)
        prompts = [render_recommender(e, run.items, run.top_k) for e in examples]
        rows = [{"id": e.id, "prompt": p, "response": r}
                for e, p, r in zip(examples, prompts, responses)]
        run.store.phase_dir(SFT)
        out = run.store.teacher()
        atomic_write_jsonl(out, rows)
        phase.finish([out], count=len(rows), teacher=cfg.teacher.kind)


def train(run: Run, phase_name: str, i: int) -> None:
    """SFT (`phase_name` "sft") or DPO iteration i: its checkpoint, recorded in the manifest."""
    key = f"{training_stage(phase_name, i)}/train"
    # The sampler actors' GPUs (and cores) go to training, on one machine or a cluster.
    run.samplers.release()
    with run.store.phase(key, lifecycle="train") as phase:
        if phase.done:
            return
        maybe_fail(f"{phase_name}:start")
        if run.cfg.launch.mode == "inprocess":
            metrics = train_phase(phase_name, run.cfg, run.store.root, i)
        else:
            metrics = launch(run, phase_name, i)
        ckpt = run.store.checkpoint(training_stage(phase_name, i))
        if not (ckpt / "config.json").exists():
            raise ReclaifError(f"{key}: training finished without a checkpoint at {ckpt}")
        phase.finish(sorted(ckpt.glob("*.safetensors")), metrics=metrics or {})


def launch(run: Run, phase_name: str, i: int) -> dict[str, Any]:
    """The phase as `reclaif train` in the processes `launch.template` starts; its metrics."""
    from reclaif.train.checkpoint import latest_train_state  # torch: only when launching

    store = run.store
    log_path = store.train_log(phase_name, i)  # run_launch makes logs/
    argv = render_launch(run.cfg.launch.template, phase=phase_name, run_dir=str(store.root),
                         iteration=i, config=str(store.root / "config.yaml"))
    stage = training_stage(phase_name, i)
    try:
        run_launch(argv, log_path)
    except PhaseError as e:
        # Tell the user what a rerun will do: the trainer resumes from its last saved state.
        state = latest_train_state(store.train_state(stage))
        resume = (f"resumes from {state}" if state is not None
                  else "starts the phase again (no training state was saved)")
        raise PhaseError(f"{stage} training failed: {e}. Rerunning the same command "
                         f"{resume}") from None
    metrics_file = store.train_metrics(stage)
    return read_json(metrics_file) if metrics_file.exists() else {}
