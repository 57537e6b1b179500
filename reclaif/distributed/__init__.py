"""Ray actor pools for sampling and judging (one actor class per role, as in OpenRLHF)."""
