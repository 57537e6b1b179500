"""A small, real-looking run directory for the trainer tests: LastFM-style prompts, teacher
answers and judge-ordered preference pairs, over a tiny random Llama (build_tiny_model)."""
from __future__ import annotations

from pathlib import Path

from reclaif.atomic import atomic_write_jsonl, atomic_write_text
from reclaif.config_load import dump_config, load_config
from reclaif.records import PreferencePair

HISTORIES = [
    ("Radiohead; Portishead; Massive Attack", ["Tricky", "Metallica", "Björk", "Slayer", "Moby"],
     ["Tricky", "Björk", "Moby"], ["Slayer", "Metallica", "Moby"]),
    ("Miles Davis; John Coltrane; Bill Evans", ["Chet Baker", "Eminem", "Thelonious Monk",
                                                "Nirvana", "Pink"],
     ["Thelonious Monk", "Chet Baker", "Pink"], ["Eminem", "Nirvana", "Pink"]),
    ("Daft Punk; Justice; Air", ["Cassius", "Iron Maiden", "Phoenix", "Dolly Parton", "Kraftwerk"],
     ["Cassius", "Kraftwerk", "Phoenix"], ["Dolly Parton", "Iron Maiden", "Phoenix"]),
    ("Nirvana; Pearl Jam; Soundgarden", ["Alice in Chains", "Mozart", "Mudhoney", "Shakira",
                                         "Bach"],
     ["Alice in Chains", "Mudhoney", "Shakira"], ["Mozart", "Bach", "Shakira"]),
    ("Adele; Amy Winehouse; Duffy", ["Lady Gaga", "Slipknot", "Joss Stone", "Burzum", "Sia"],
     ["Joss Stone", "Sia", "Lady Gaga"], ["Burzum", "Slipknot", "Sia"]),
    ("Bob Dylan; Neil Young; Leonard Cohen", ["Tom Waits", "Skrillex", "Nick Drake", "Korn",
                                              "ABBA"],
     ["Tom Waits", "Nick Drake", "ABBA"], ["Skrillex", "Korn", "ABBA"]),
]


def prompt(history: str, candidates: list[str]) -> str:
    return (f"The user listened to these artists in order: {history}.\n"
            f"Candidates: {'; '.join(candidates)}.\n"
            "Recommend 3 candidates, best first, with a reason each.")


def answer(items: list[str]) -> str:
    return "\n".join(f"{k}. {name} - similar style to the history" for k, name in
                     enumerate(items, 1))


def make_run_dir(root: Path, model_dir: Path, overrides: list[str] = (),
                 iterations: tuple[int, ...] = (1,)) -> Path:
    """RUN/config.yaml, RUN/sft/teacher.jsonl and RUN/iter-NNN/pairs.jsonl for each iteration."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"recommender.model={model_dir}", *overrides])
    atomic_write_text(root / "config.yaml", dump_config(cfg))
    atomic_write_jsonl(root / "sft" / "teacher.jsonl",
                       [{"id": f"ex-{k}", "prompt": prompt(h, c), "response": answer(good)}
                        for k, (h, c, good, _) in enumerate(HISTORIES)])
    for i in iterations:
        atomic_write_jsonl(root / f"iter-{i:03d}" / "pairs.jsonl", [
            PreferencePair(f"ex-{k}", prompt(h, c), answer(good), answer(bad),
                           {"choice": "a"}).to_json()
            for k, (h, c, good, bad) in enumerate(HISTORIES)])
    return root
