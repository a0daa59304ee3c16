"""One-line status messages for the user (stderr, so stdout stays the results), printed by rank 0 only."""
from __future__ import annotations

import os
import sys


def say(message: str) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"llmrec: {message}", file=sys.stderr, flush=True)


def epochs_line(tcfg, what: str) -> str:
    """What `trainer.max_epochs` resolved to and where it came from (config.compose.resolve_epochs)."""
    source = tcfg.get("epochs_from") or "trainer.max_epochs"
    stop = f", early stopping after {tcfg['patience']} evaluations without improvement" if tcfg.get("patience") else ""
    return f"training {what} for up to {tcfg['max_epochs']} epochs (from {source}; set trainer.max_epochs= to change){stop}"
