"""Two-rank ZeRO-3 worker for tests/test_logprobs_zero3.py (started by torchrun on CPU/gloo).

Each rank trains the same tiny Llama (tied or untied lm_head) under DeepSpeed ZeRO-3, fp32,
gradient accumulation 2, on its share of fixed micro-batches, with a loss built on the fused
kernel (`sft`: model_sequence_logps + sft_loss; `sfthead`: the same with the rows' common head
run once, two body forwards before one backward; `dpo`: fused_dpo_loss; `shared`: the same with
each pair's prompt run once, a 4D mask through the ZeRO-3 model, and the pairs' common head
once for both pairs). Rank 0 saves the loss of every micro-batch and the full (gathered)
gradients at the accumulation boundary, and the lm_head weight after one SGD step (not Adam:
Adam's first step is lr*sign(grad), which flips on rounding noise where a gradient is near
zero). `reference()` computes the same without ZeRO in one process. The losses are given the
ENGINE, as the trainer must: DeepSpeed counts micro-steps in engine.forward, and without that
count ZeRO-3 overwrites the first micro-batch's gradients instead of accumulating them.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys

import torch

MICRO = 2  # sequences (sft) or pairs (dpo) per micro-batch
ACCUM = 2
WORLD = 2
LR = 0.5


def tiny_llama(tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    return model.float()


def micro_batches(kind: str) -> list[dict]:
    """WORLD*ACCUM micro-batches; global micro-batch i goes to rank i % WORLD, step i // WORLD."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(WORLD * ACCUM):
        def seqs(n: int, t: int) -> dict:
            ids = torch.randint(0, 96, (n, t), generator=g)
            att = torch.ones(n, t, dtype=torch.long)
            att[0, t - 3:] = 0  # a right-padded row
            loss = torch.zeros(n, t, dtype=torch.long)
            loss[:, t // 2:] = 1  # the "response" half counts
            return {"input_ids": ids, "attention_mask": att, "loss_mask": loss * att}
        if kind in ("sft", "hf"):
            out.append(seqs(MICRO, 12))
        elif kind == "sfthead":  # rows that begin with one 5-token head (the prompts' shared one)
            b = seqs(MICRO, 12)
            b["input_ids"][1:, :5] = b["input_ids"][0, :5]
            out.append(b)
        elif kind == "shared":  # pairs whose answers follow one 5-token prompt (encode_pair's)
            c, r = seqs(MICRO, 12), seqs(MICRO, 10)
            c["input_ids"][1:, :3] = c["input_ids"][0, :3]  # prompts that share a 3-token head
            r["input_ids"][:, :5] = c["input_ids"][:, :5]
            for x in (c, r):
                x["loss_mask"] = x["attention_mask"].clone()
                x["loss_mask"][:, :5] = 0
            out.append({"chosen": c, "rejected": r,
                        "ref_chosen": -torch.rand(MICRO, generator=g) * 30,
                        "ref_rejected": -torch.rand(MICRO, generator=g) * 30})
        else:
            out.append({"chosen": seqs(MICRO, 12), "rejected": seqs(MICRO, 10),
                        "ref_chosen": -torch.rand(MICRO, generator=g) * 30,
                        "ref_rejected": -torch.rand(MICRO, generator=g) * 30})
    return out


def micro_loss(model: torch.nn.Module, kind: str, batch: dict) -> torch.Tensor:
    from reclaif.train.fused_dpo import fused_dpo_loss
    from reclaif.train.logprobs import model_sequence_logps
    from reclaif.train.losses import sft_loss
    from reclaif.train.shared_head import head_sequence_logps

    if kind == "hf":  # control: the model's own forward and loss, no fused kernel
        labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=labels).loss
    if kind == "sft":
        logps, counts = model_sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                             batch["loss_mask"], chunk_size=5)
        return sft_loss(logps, counts)
    if kind == "sfthead":  # the head once, then both remainders over its keys and values
        from reclaif.train.data import split_head

        n = batch["attention_mask"].sum(1).tolist()
        rows = [{k: batch[k][i, :n[i]].tolist() for k in ("input_ids", "loss_mask")}
                for i in range(MICRO)]
        split = split_head(rows, 5, 0)
        logps, counts = head_sequence_logps(model, split["head_ids"], split["input_ids"],
                                            split["attention_mask"], split["loss_mask"],
                                            chunk_size=5)
        return sft_loss(logps, counts)
    loss, _ = fused_dpo_loss(model, batch["chosen"], batch["rejected"], batch["ref_chosen"],
                             batch["ref_rejected"], beta=0.5, chunk_size=7,
                             shared_prompt=kind == "shared")
    return loss


def reference(kind: str, tied: bool) -> dict:
    """The same optimisation step without ZeRO, in one process: mean over all micro-batches."""
    model = tiny_llama(tied)
    losses = []
    for batch in micro_batches(kind):
        loss = micro_loss(model, kind, batch)
        (loss / (WORLD * ACCUM)).backward()
        losses.append(loss.item())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    opt.step()
    return {"losses": losses, "grads": grads,
            "lm_head_after": model.get_output_embeddings().weight.detach().clone()}


def zero3(kind: str, tied: bool) -> dict | None:
    import deepspeed

    model = tiny_llama(tied)
    config = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": ACCUM,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
        "steps_per_print": 1_000_000,
    }
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    rank = torch.distributed.get_rank()
    head = engine.module.get_output_embeddings().weight
    assert head.numel() == 0, "lm_head must be partitioned for this test to mean anything"
    batches = micro_batches(kind)
    losses = {}
    grads = None
    for step in range(ACCUM):
        i = step * WORLD + rank
        # the engine, not engine.module: DeepSpeed counts micro-steps in its forward
        loss = micro_loss(engine, kind, batches[i])
        engine.backward(loss)
        losses[i] = loss.item()
        if step == ACCUM - 1:
            # at the boundary: the reduced (world-averaged) fp32 gradients, gathered
            # the optimizer's reduced fp32 partitions, gathered (safe_get_full_grad would return
            # param.grad, which ZeRO-3 leaves holding a stale local buffer)
            grads = {n: engine.optimizer.get_fp32_grad_for_param(p).clone()
                     for n, p in engine.module.named_parameters()}
        engine.step()
    all_losses = [None] * WORLD
    torch.distributed.all_gather_object(all_losses, losses)
    with deepspeed.zero.GatheredParameters([head]):
        after = head.detach().clone()
    if rank != 0:
        return None
    merged = {k: v for d in all_losses for k, v in d.items()}
    return {"losses": [merged[i] for i in range(WORLD * ACCUM)], "grads": grads,
            "lm_head_after": after}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=200.0,
                    help="dump every thread's stack and exit after this many seconds (a hang)")
    ap.add_argument("--cases", default="sft-tied,sft-untied,dpo-tied")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.deadline, exit=True)
    import deepspeed

    # gloo does the collectives; DeepSpeed's optional shared-memory op would otherwise be
    # JIT-compiled here (minutes on two cores, and a lock that hangs every rank if killed).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    results = {}
    for case in args.cases.split(","):
        kind, tying = case.split("-")
        res = zero3(kind, tying == "tied")
        if res is not None:
            results[case] = res
    if torch.distributed.get_rank() == 0:
        torch.save(results, args.out)
        print(json.dumps({"saved": sorted(results)}))
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
