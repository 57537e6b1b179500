"""GPU check, run by hand on a CUDA machine (CI has none): SFT then one DPO iteration of a tiny
Llama with the torch engine and bf16 autocast, then sampling from the checkpoint with the hf
client in bf16. Prints one JSON line; exits 1 if a loss did not fall or a phase ran off-GPU.

    python tests/gpu_train_check.py TINY_MODEL_DIR OUT_DIR [torch|deepspeed]

With deepspeed the same recipes run under ZeRO-3 (configs/deepspeed/zero3.json: FusedAdam,
bf16) as a group of one, in-process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_run import make_run_dir  # noqa: E402

from reclaif.config import LLMSpec  # noqa: E402
from reclaif.config_load import load_config  # noqa: E402
from reclaif.llm.hf import HFClient  # noqa: E402
from reclaif.train.dpo import run_dpo  # noqa: E402
from reclaif.train.sft import run_sft  # noqa: E402

OVERRIDES = ["sft.bf16=true", "dpo.bf16=true", "sft.gradient_checkpointing=true", "sft.lr=3.0e-3", "sft.epochs=3", "sft.batch_size=2",
             "sft.max_length=160", "dpo.lr=1.0e-3", "dpo.batch_size=3", "dpo.epochs=2",
             "dpo.max_length=160"]


def main(model_dir: str, out_dir: str, engine: str = "torch") -> int:
    extra = [f"{phase}.{k}" for phase in ("sft", "dpo") for k in
             ("engine=deepspeed", "deepspeed_config=configs/deepspeed/zero3.json")
             ] if engine == "deepspeed" else []
    run = make_run_dir(Path(out_dir) / f"run-{engine}", Path(model_dir), OVERRIDES + extra)
    cfg = load_config(run / "config.yaml")
    sft = run_sft(cfg, run)
    dpo = run_dpo(cfg, run, 1)
    client = HFClient(LLMSpec(backend="hf", model=str(run / "iter-001" / "checkpoint"),
                              dtype="auto", device="auto"))
    outs = client.generate(["Recommend three artists like Radiohead."] * 4, n=2,
                           temperature=1.0, top_p=0.95, max_new_tokens=24, seed=0)
    param = next(client.model.parameters())
    result = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
              "engine": engine,
              "sft": {k: sft[k] for k in ("loss_first_step", "loss", "steps")},
              "dpo": {k: dpo[k] for k in ("loss_first_step", "loss", "rewards/margins",
                                          "rewards/accuracies")},
              "sampler": {"device": str(param.device), "dtype": str(param.dtype),
                          "answers": sum(len(o) for o in outs),
                          "own_decode_loop": client.own_decode_loop}}
    print(json.dumps(result))
    ok = (sft["loss"] < sft["loss_first_step"] and dpo["loss"] < dpo["loss_first_step"]
          and param.is_cuda and param.dtype == torch.bfloat16 and result["sampler"]["answers"] == 8
          and client.own_decode_loop)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
