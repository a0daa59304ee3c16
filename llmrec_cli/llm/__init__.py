"""LLM layer: backbone loading, prompts and the batched scoring engine (torch/transformers imported lazily)."""
