"""The LLM recommender (paper §3.1): prompt for an Example → sampled text → Recommendation.

Rendering and parsing are the prompts/parsing layers' (one renderer, one parser); this module
only joins them to a client, so the same Recommender serves the hf, vLLM and remote backends.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from reclaif.config import LLMSpec
from reclaif.config_load import load_config
from reclaif.errors import DataError, ReclaifError
from reclaif.llm.base import LLMClient
from reclaif.records import Example, Item, Recommendation
from reclaif.data import load_items
from reclaif.evidence import evidence_of_checkpoint, run_of_checkpoint
from reclaif.llm import make_client
from reclaif.parsing import parse_recommendation
from reclaif.prompts import render_recommender


class Recommender:
    def __init__(self, client: LLMClient, items: dict[str, Item], top_k: int):
        if top_k < 1:
            raise ReclaifError(f"top_k: {top_k} must be at least 1")
        self.client = client
        self.items = items
        self.top_k = top_k

    def prompts(self, examples: list[Example]) -> list[str]:
        """The recommender prompt of each example (the user message; clients add the template)."""

        return [render_recommender(ex, self.items, self.top_k) for ex in examples]

    def fit(self, examples: list[Example], max_new_tokens: int,
            max_total_tokens: int = 0) -> list[Example]:
        """The examples whose prompts leave room for max_new_tokens within the model's context
        and, where given, max_total_tokens (the DPO trainer's max_length, so the pairs these
        answers make are trained whole): see fit_candidates. A client that cannot count
        tokens (a remote endpoint) gets the examples as they are."""
        limits = [x - max_new_tokens for x in (self.client.context_length(), max_total_tokens)
                  if x]
        if not limits or self.client.prompt_tokens("") is None:
            return examples
        budget = min(limits)
        return [fit_candidates(ex, self.items, self.top_k, self.client.prompt_tokens, budget)
                for ex in examples]

    def check_context(self, examples: list[Example], prompts: list[str],
                      max_new_tokens: int) -> None:
        """Refuses a prompt that, with its answer, overflows the model's context, before any
        generation (10,000 candidates once made a 79k-token prompt for an 8k model that ran on
        for minutes), naming the example and what to cut. Sampling fits its prompts first
        (`fit`); evaluation and `reclaif recommend` must not lose candidates silently."""
        limit = self.client.context_length()
        if not limit or self.client.prompt_tokens("") is None:
            return  # a remote endpoint: it counts and refuses itself
        for ex, prompt in zip(examples, prompts):
            n = self.client.prompt_tokens(prompt)
            if n + max_new_tokens > limit:
                raise ReclaifError(
                    f"example {ex.id}: its prompt is {n:,} tokens and its answer may take "
                    f"{max_new_tokens}, over the model's {limit:,}-token context; give fewer "
                    f"candidates ({len(ex.candidates):,} now) or a shorter history or query")

    def parse(self, text: str, example: Example) -> Recommendation:
        return parse_recommendation(text, example, self.items, self.top_k)

    def recommend(self, examples: list[Example], n: int = 1, temperature: float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 256,
                  seed: int = 0) -> list[list[Recommendation]]:
        """`n` parsed recommendations per example, in the examples' order."""
        if not examples:
            return []
        prompts = self.prompts(examples)
        self.check_context(examples, prompts, max_new_tokens)
        texts = self.client.generate(prompts, n=n, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        if len(texts) != len(examples):
            raise ReclaifError(f"client returned {len(texts)} answer lists for "
                               f"{len(examples)} prompts")
        return [[self.parse(t, ex) for t in outs] for ex, outs in zip(examples, texts)]


def fit_candidates(example: Example, items: dict[str, Item], top_k: int,
                   count: Callable[[str], int], budget: int) -> Example:
    """`example`, or a copy with candidates dropped from the end of its list until its
    recommender prompt takes at most `budget` tokens (`count`: the prompt's tokens in the
    chat template). A prompt is never cut mid-text: the model always sees the system turn, the
    whole history and the task. Labelled candidates are never dropped, nor below top_k; a
    prompt that still does not fit is a DataError naming the example, its tokens and the
    budget."""
    tokens = count(render_recommender(example, items, top_k))
    if tokens <= budget:
        return example
    keep = list(example.candidates)
    droppable = [i for i, c in enumerate(keep) if example.labels.get(c, 0) <= 0]
    while droppable and len(keep) > top_k:
        keep.pop(droppable.pop())  # from the end: later indices first, so earlier ones hold
        fitted = replace(example, candidates=keep,
                         evidence={c: e for c, e in example.evidence.items() if c in keep})
        if count(render_recommender(fitted, items, top_k)) <= budget:
            return fitted
    raise DataError(f"example {example.id}: its recommender prompt takes {tokens} tokens, over "
                    f"the {budget} left for it (the context or max_length less the answer), "
                    f"and stays over with {len(keep)} candidates; shorten the evidence or raise "
                    "the limit")


def fit_answered(examples: list[Example], items: dict[str, Item], top_k: int,
                 respond: Callable[[list[Example]], list[str]], count_prompt: Callable[[str], int],
                 count_answer: Callable[[str], int], max_length: int
                 ) -> tuple[list[Example], list[str]]:
    """SFT's examples and teacher answers, every prompt + answer within max_length whole: a
    pair over it has its prompt fitted (fit_candidates) to what its answer leaves and is
    answered again, since the teacher chooses among the candidates the prompt shows; a second
    pass catches an answer that grew. Still over: DataError naming the example."""
    examples, answers = list(examples), respond(examples)
    for _ in range(2):
        over = [i for i, (ex, a) in enumerate(zip(examples, answers))
                if count_prompt(render_recommender(ex, items, top_k)) + count_answer(a)
                > max_length]
        if not over:
            return examples, answers
        for i in over:
            examples[i] = fit_candidates(examples[i], items, top_k, count_prompt,
                                         max_length - count_answer(answers[i]))
        for i, a in zip(over, respond([examples[i] for i in over])):
            answers[i] = a
    for ex, a in zip(examples, answers):
        tokens = count_prompt(render_recommender(ex, items, top_k)) + count_answer(a)
        if tokens > max_length:
            raise DataError(f"example {ex.id}: prompt + teacher answer take {tokens} tokens, "
                            f"over sft.max_length {max_length} even with fewer candidates")
    return examples, answers


def adhoc_example(candidates: list[str], context: list[str] | str, domain: str
                  ) -> tuple[Example, dict[str, Item]]:
    """An Example and catalog built from names (ids = names): `context` is a history of names
    (sequential task) or a query (retrieval task)."""
    if not candidates:
        raise ReclaifError("candidates: give at least one name")
    task = "retrieval" if isinstance(context, str) else "sequential"
    names = candidates + (context if isinstance(context, list) else [])
    items = {name: Item(id=name, title=name) for name in names}
    ex = Example(id="cli", task=task, context=context, candidates=candidates, labels={},
                 split="cli", domain=domain)
    return ex, items


def with_run_evidence(example: Example, items: dict[str, Item], model: str
                      ) -> tuple[Example, dict[str, Item]]:
    """For a checkpoint of a hybrid run: the names mapped to the run's catalog ids (exact, then
    case-insensitive title) and the run's evaluation evidence model's lines on the candidates,
    so the model reads the prompt it was trained on. Other models: unchanged."""

    root = run_of_checkpoint(model)
    if root is None or load_config(root / "config.yaml").evidence.mode != "hybrid":
        return example, items
    catalog = load_items(load_config(root / "config.yaml").data.path)
    by_title = {}
    for item in catalog.values():
        by_title.setdefault(item.title, item.id)
        by_title.setdefault(item.title.casefold(), item.id)

    def to_id(name: str) -> str:
        return by_title.get(name) or by_title.get(name.casefold()) or name

    merged = {**items, **catalog}
    models = evidence_of_checkpoint(model, merged)
    context = example.context if isinstance(example.context, str) else \
        [to_id(n) for n in example.context]
    mapped = replace(example, context=context, candidates=[to_id(n) for n in example.candidates])
    models.prepare([mapped])
    return models.annotate(mapped, merged), merged


def recommend_names(example: Example, items: dict[str, Item], model: str = "default",
                    backend: str = "hf", base_url: str = "", api_key_env: str = "",
                    top_k: int = 3, temperature: float = 0.0, max_new_tokens: int = 256,
                    seed: int = 0, timeout_s: float | None = None,
                    max_retries: int | None = None) -> tuple[Recommendation, dict[str, Item]]:
    """One recommendation from `model` for an ad-hoc example (adhoc_example), with the run's
    evidence where the model is a hybrid run's checkpoint; returns it and the catalog used."""

    example, items = with_run_evidence(example, items, model)
    spec = replace(LLMSpec(), backend=backend, model=model, base_url=base_url or "",
                   api_key_env=api_key_env or LLMSpec().api_key_env)
    if timeout_s is not None:
        spec = replace(spec, timeout_s=timeout_s)
    if max_retries is not None:
        spec = replace(spec, max_retries=max_retries)
    rec = Recommender(make_client(spec), items, top_k)
    result = rec.recommend([example], n=1, temperature=temperature,
                           max_new_tokens=max_new_tokens, seed=seed)[0][0]
    return result, items
