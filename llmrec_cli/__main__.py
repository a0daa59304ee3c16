"""`python -m llmrec_cli ...` is the `llmrec` command (sweep jobs use it to run with the same interpreter)."""
from llmrec_cli.cli import main

main()
