"""llmrec: one split, one candidate set and one evaluator for LLM-enhanced recommenders."""

__version__ = "0.1.0"
