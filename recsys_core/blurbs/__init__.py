"""LLM-written recommendation blurbs: facts, writer, grounding check, constrained decoding, LLM backends."""
