"""Two-rank ZeRO-3 worker for tests/test_sdpo.py (started by torchrun on CPU/gloo): the S-DPO
loss on packed groups (reclaif.train.groups.fused_sdpo_loss, a 4D mask through the ZeRO-3
model and the chunked kernel on a gathered lm_head) under DeepSpeed ZeRO-3, fp32, gradient
accumulation 2. Rank 0 saves every micro-batch's loss, the gathered gradients at the
accumulation boundary and the lm_head after one SGD step; `reference()` is the same without
ZeRO in one process. Before training, both ranks compute the groups' reference log-probs
(reclaif.train.reference.compute_group_reference_logps, the DPO recipe's reference pass: the
groups split over the ranks, padded to one count, gathered to rank 0); rank 0 saves what each
rank returned, `reference_rows()` is the one-rank result. The model, the engine config and the
reasons for each choice are those of zero3_logprobs_worker.py, whose tiny_llama this imports."""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zero3_logprobs_worker import ACCUM, LR, WORLD, tiny_llama  # noqa: E402

SIZES = [[3, 2], [2, 4], [4, 3], [2, 2]]  # answers per group, per global micro-batch


def micro_batches() -> list[dict]:
    """WORLD*ACCUM micro-batches of groups: one prompt, answers of different lengths."""
    from reclaif.train.groups import collate_groups

    g = torch.Generator().manual_seed(2)
    out = []
    for sizes in SIZES:
        groups = []
        for n in sizes:
            prompt = torch.randint(1, 96, (int(torch.randint(3, 8, (1,), generator=g)),),
                                   generator=g).tolist()
            rows = []
            for _ in range(n):
                answer = torch.randint(1, 96, (int(torch.randint(2, 7, (1,), generator=g)),),
                                       generator=g).tolist()
                rows.append({"input_ids": prompt + answer,
                             "loss_mask": [0] * len(prompt) + [1] * len(answer)})
            groups.append(rows)
        batch = collate_groups(groups, pad_id=0)
        batch["ref"] = -torch.rand(sum(sizes), generator=g) * 30
        out.append(batch)
    return out


# Five groups for two ranks (one padding record on rank 1), two per forward: every rank must
# run the same number of ZeRO-3 forwards, and each batch mixes group sizes and lengths.
REF_SIZES = [4, 2, 3, 4, 2]
REF_BATCH = 2


def reference_groups() -> list[dict]:
    """encode_groups-shaped records: {"example_id", "answers": rows, chosen first}."""
    g = torch.Generator().manual_seed(3)
    out = []
    for k, n in enumerate(REF_SIZES):
        prompt = torch.randint(1, 96, (int(torch.randint(3, 9, (1,), generator=g)),),
                               generator=g).tolist()
        rows = []
        for _ in range(n):
            answer = torch.randint(1, 96, (int(torch.randint(2, 8, (1,), generator=g)),),
                                   generator=g).tolist()
            rows.append({"input_ids": prompt + answer,
                         "loss_mask": [0] * len(prompt) + [1] * len(answer)})
        out.append({"example_id": f"g{k}", "answers": rows})
    return out


def reference_rows(model: torch.nn.Module, rank: int = 0, world_size: int = 1) -> list | None:
    from reclaif.train.reference import compute_group_reference_logps

    return compute_group_reference_logps(lambda fn, *a: fn(model, *a), reference_groups(),
                                         pad_id=0, batch_size=REF_BATCH, chunk=7, rank=rank,
                                         world_size=world_size, kernel="torch")


def micro_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    from reclaif.train.groups import fused_sdpo_loss

    loss, _ = fused_sdpo_loss(model, batch, batch["ref"], beta=0.5, chunk_size=7)
    return loss


def reference(tied: bool) -> dict:
    model = tiny_llama(tied)
    losses = []
    for batch in micro_batches():
        loss = micro_loss(model, batch)
        (loss / (WORLD * ACCUM)).backward()
        losses.append(loss.item())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return {"losses": losses, "grads": grads,
            "lm_head_after": model.get_output_embeddings().weight.detach().clone()}


def zero3(tied: bool) -> dict | None:
    import deepspeed

    model = tiny_llama(tied)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": ACCUM,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0,
              "steps_per_print": 1_000_000}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    rank = torch.distributed.get_rank()
    head = engine.module.get_output_embeddings().weight
    assert head.numel() == 0, "lm_head must be partitioned for this test to mean anything"
    # The reference pass before any update, as the DPO recipe runs it (the policy's engine).
    with torch.no_grad():
        ref_rows = reference_rows(engine.module, rank, WORLD)
    returned = [None] * WORLD
    torch.distributed.all_gather_object(returned, ref_rows)
    batches, losses, grads = micro_batches(), {}, None
    for step in range(ACCUM):
        i = step * WORLD + rank
        loss = micro_loss(engine, batches[i])  # the engine: DeepSpeed counts micro-steps there
        engine.backward(loss)
        losses[i] = loss.item()
        if step == ACCUM - 1:
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
            "lm_head_after": after, "reference_rows": returned}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=200.0)
    ap.add_argument("--tied", default="tied", choices=["tied", "untied"])
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.deadline, exit=True)
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see zero3_logprobs_worker
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    res = zero3(args.tied == "tied")
    if res is not None:
        torch.save(res, args.out)
        print(json.dumps({"saved": args.out}))
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
