"""`reclaif recommend`: one recommendation from a model for names given on the command line."""
from __future__ import annotations

import argparse
import json
import re

from reclaif.cli.common import count, handler, positive_float, positive_int
from reclaif.config import LLMSpec, choices
from reclaif.errors import ReclaifError
from reclaif.logs import terminal_safe
from reclaif.recommender import adhoc_example, recommend_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="one recommendation from a model")
    p.add_argument("--model", default="default", help="checkpoint dir, HF dir, or 'default'")
    # no argparse choices: a bad backend is the client factory's one-line error, as it was
    p.add_argument("--backend", default="hf", help=", ".join(choices(LLMSpec, "backend")))
    p.add_argument("--base-url", help="openai_compat: the endpoint, e.g. http://host:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai_compat: the environment variable that holds the API key")
    p.add_argument("--domain", default="music", choices=["music", "beauty", "product_search"])
    p.add_argument("--history", help="'a; b; c' (sequential task)")
    p.add_argument("--query", help="search query (retrieval task)")
    p.add_argument("--candidates", required=True, help="'x; y; z'")
    p.add_argument("--top-k", type=positive_int, default=3)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_float, default=LLMSpec().timeout_s,
                   help="seconds one endpoint request may take (openai_compat, bedrock)")
    p.add_argument("--retries", type=count, default=LLMSpec().max_retries,
                   help="retries of a failed endpoint request")
    p.add_argument("--json", action="store_true", help="print the Recommendation as JSON")
    handler(p, recommend)


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(";") if s.strip()]


def _context(args: argparse.Namespace) -> list[str] | str:
    """--history names (sequential) or the --query text (retrieval), exactly one of them."""
    if args.query and args.history:
        raise ReclaifError("give --history (sequential) or --query (retrieval), not both")
    if args.query:
        return args.query.strip()
    history = _names(args.history)
    if not history:
        raise ReclaifError("give --history 'a; b; c' (sequential) or --query TEXT (retrieval)")
    return history


def recommend(args: argparse.Namespace) -> int:
    candidates = _names(args.candidates)
    if not candidates:
        raise ReclaifError("--candidates: give at least one name, separated by ';'")
    example, items = adhoc_example(candidates, _context(args), args.domain)
    result, items = recommend_names(example, items, model=args.model, backend=args.backend,
                                    base_url=args.base_url or "", api_key_env=args.api_key_env,
                                    top_k=args.top_k, temperature=args.temperature,
                                    max_new_tokens=args.max_new_tokens, seed=args.seed,
                                    timeout_s=args.timeout, max_retries=args.retries)
    if args.json:
        # json escapes C0 controls itself; C1 ones (U+0080-U+009F) it leaves raw.
        text = json.dumps(result.to_json(), ensure_ascii=False, indent=2)
        print(re.sub(r"[\x7f-\x9f]", lambda m: f"\\u{ord(m.group(0)):04x}", text))
    else:
        if result.key_features:
            print(terminal_safe("Key features: " + ", ".join(result.key_features)))
        for rank, (item, reason) in enumerate(zip(result.items, result.reasons), 1):
            title = items[item].title if item in items else item
            print(terminal_safe(f"{rank}. {title}" + (f": {reason}" if reason else "")))
        if not result.valid:
            print("(the answer did not parse as a valid recommendation; raw text follows)")
            print(terminal_safe(result.raw_text))
    return 0
