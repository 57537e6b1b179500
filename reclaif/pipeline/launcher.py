"""Launch templates: the one place that says how a training phase is started.

A template is a command line with `{placeholders}` (Python format syntax; `{{`/`}}` are literal
braces). It is split with shlex *before* values are filled in, so a value with spaces stays one
argument and can never inject a second one. The driver renders `launch.template` with
`phase`, `run_dir`, `iteration` and `config`; the Slurm and launch scripts render the named
`TEMPLATES` below through `python -m reclaif.pipeline.launcher`, so a cluster job and a local
rehearsal start training from the same text.

    python -m reclaif.pipeline.launcher render NAME key=value ...   # argv, shell-quoted (or --null)
    python -m reclaif.pipeline.launcher fill [--yaml] NAME key=value ...   # some keys filled
    python -m reclaif.pipeline.launcher list                        # names and their text
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import string
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reclaif.errors import ConfigError, PhaseError

REPO = Path(__file__).resolve().parents[2]

# Every placeholder a template may use, with what fills it.
PLACEHOLDERS: dict[str, str] = {
    "phase": "training phase: sft or dpo",
    "run_dir": "run directory (runs/NAME)",
    "iteration": "DPO iteration, 1-based (0 for SFT)",
    "config": "the run's frozen config.yaml",
    "num_machines": "nodes taking part ($SLURM_JOB_NUM_NODES)",
    "machine_rank": "this node's rank, 0-based ($SLURM_NODEID)",
    "main_process_ip": "address of rank 0's node (first host of `scontrol show hostnames`)",
    "main_process_port": "rendezvous TCP port on that node",
    "num_processes": "processes in all (nodes x GPUs per node); accelerate's --num_processes",
    "nproc_per_node": "processes on each node (GPUs per node)",
    "accelerate_config": "accelerate config YAML (configs/accelerate/*.yaml)",
    "python": "Python interpreter (default: the one running this module)",
    "launch_dir": "the repository's launch/ folder (default: beside this package)",
}

_TRAIN = "-m reclaif.cli train {phase} --run-dir {run_dir} --iteration {iteration}"

TEMPLATES: dict[str, str] = {
    # One process, no launcher: a CPU or one-GPU rehearsal.
    "python": "{python} " + _TRAIN,
    # What users type on GPUs; machine_rank etc. override the YAML's values.
    "accelerate": ("accelerate launch --config_file {accelerate_config}"
                   " --num_machines {num_machines} --machine_rank {machine_rank}"
                   " --main_process_ip {main_process_ip} --main_process_port {main_process_port}"
                   " --num_processes {num_processes} " + _TRAIN),
    # Static rendezvous: node 0 hosts the store on main_process_port, so two "nodes" on
    # 127.0.0.1 (the two-node rehearsal) do not collide.
    "torchrun": ("torchrun --nnodes {num_machines} --node_rank {machine_rank}"
                 " --nproc_per_node {nproc_per_node} --rdzv_backend static"
                 " --master_addr {main_process_ip} --master_port {main_process_port} " + _TRAIN),
    # --no_ssh: every node runs its own launcher (as under srun) instead of pdsh from node 0.
    "deepspeed": ("deepspeed --no_ssh --num_nodes {num_machines} --node_rank {machine_rank}"
                  " --num_gpus {nproc_per_node} --master_addr {main_process_ip}"
                  " --master_port {main_process_port} --module reclaif.cli train {phase}"
                  " --run-dir {run_dir} --iteration {iteration}"),
    # One node, any launcher: launch/train.sh renders $RECLAIF_LAUNCHER (accelerate by default)
    # for this machine's GPUs. launch/run.sh gives this to the driver.
    "node": "{launch_dir}/train.sh {phase} {run_dir} {iteration}",
    # Slurm: one task per node; launch/train.sh picks this node's rank from $SLURM_NODEID and
    # renders the template named by $RECLAIF_LAUNCHER (accelerate by default). The step name
    # lets the batch script signal the training step alone; --overlap because the Ray steps
    # already hold the nodes.
    "srun": ("srun --overlap --job-name reclaif-train --nodes {num_machines}"
             " --ntasks-per-node 1 --kill-on-bad-exit=1"
             " {launch_dir}/train.sh {phase} {run_dir} {iteration}"),
}


def _defaults() -> dict[str, str]:
    return {"python": sys.executable, "launch_dir": str(REPO / "launch")}


def placeholders(template: str) -> list[str]:
    """Placeholder names used by `template`, in order; ConfigError if one is not known."""
    names: list[str] = []
    unknown: list[str] = []
    try:
        for token in shlex.split(template):
            for _, name, spec, conv in string.Formatter().parse(token):
                if name is None:
                    continue
                if name not in PLACEHOLDERS or spec or conv:
                    unknown.append("{" + name + (f"!{conv}" if conv else "")
                                   + (f":{spec}" if spec else "") + "}")
                elif name not in names:
                    names.append(name)
    except ValueError as e:  # unbalanced quotes or braces
        raise ConfigError(f"launch.template: cannot parse {template!r} ({e})") from None
    if unknown:
        raise ConfigError(f"launch.template: unknown placeholder(s) {', '.join(unknown)} in "
                          f"{template!r}; known: {', '.join(PLACEHOLDERS)}")
    return names


def _fill_token(token: str, values: Mapping[str, str], keep_missing: bool) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(token):
        out.append(literal.replace("{", "{{").replace("}", "}}") if keep_missing else literal)
        if name is None:
            continue
        if name in values:
            v = values[name]
            out.append(v.replace("{", "{{").replace("}", "}}") if keep_missing else v)
        else:
            out.append("{" + name + "}")
    return "".join(out)


def _check_keys(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(f"launch: unknown placeholder value(s) {', '.join(unknown)}; "
                          f"known: {', '.join(PLACEHOLDERS)}")


def render_launch(template: str, **values: Any) -> list[str]:
    """Fills every placeholder of `template` and returns the argv.

    Known values the template does not use are ignored (the driver always passes phase,
    run_dir, iteration and config); `python` and `launch_dir` have defaults. A placeholder or a
    value key that is not in PLACEHOLDERS, or a placeholder left without a value, raises
    ConfigError naming it.
    """
    names = placeholders(template)
    _check_keys(values)
    vals = {**_defaults(), **{k: str(v) for k, v in values.items() if v is not None}}
    missing = [n for n in names if n not in vals]
    if missing:
        raise ConfigError(f"launch.template: no value for {', '.join('{' + n + '}' for n in missing)}"
                          f" in {template!r}")
    return [_fill_token(t, vals, keep_missing=False) for t in shlex.split(template)]


_SAFE = re.compile(r"^[\w@%+=:,./{}-]+$")


def fill_template(template: str, **values: Any) -> str:
    """Fills only the given placeholders; returns a template that still holds the others.

    The Slurm script fills the cluster's sizes this way and hands the rest ({phase},
    {run_dir}, {iteration}) to the driver as `launch.template`.
    """
    placeholders(template)
    _check_keys(values)
    vals = {k: str(v) for k, v in values.items() if v is not None}
    tokens = [_fill_token(t, vals, keep_missing=True) for t in shlex.split(template)]
    return " ".join(t if _SAFE.match(t) else shlex.quote(t) for t in tokens)


def run_launch(argv: Sequence[str], log_path: str | Path, env: Mapping[str, str] | None = None,
               timeout: float | None = None) -> int:
    """Runs `argv` with stdout and stderr appended to `log_path`; returns 0 or raises PhaseError.

    `env` entries are added to this process's environment. A nonzero exit, a missing program
    or a timeout raises PhaseError naming the log to read.
    """
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh:
        fh.write(f"$ {shlex.join(argv)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True)
        except OSError as e:
            raise PhaseError(f"cannot start {argv[0]!r} ({e.strerror}); log: {log}") from None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The launcher's own group: torchrun/accelerate children die with it.
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            raise PhaseError(f"{argv[0]} ran past {timeout:g} s and was stopped; log: {log}") from None
        except KeyboardInterrupt:
            os.killpg(proc.pid, 2)
            proc.wait()
            raise
    if rc != 0:
        raise PhaseError(f"{shlex.join(argv[:3])} ... {_exit_text(rc)}; log: {log}")
    return rc


def _exit_text(rc: int) -> str:
    """Popen's negative code means a signal: name it (SIGKILL is what the OOM killer sends)."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def named_template(name: str) -> str:
    """The text of TEMPLATES[name]; an unknown name is a ConfigError listing the known ones."""
    if name not in TEMPLATES:
        raise ConfigError(f"no launch template '{name}'; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]

