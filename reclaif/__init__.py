"""RecLAIF: LLM recommenders trained from AI feedback (SFT, then iterative DPO)."""

__version__ = "0.1.0"
