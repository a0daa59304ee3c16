"""The LoRA training loop shared by tuned LLM methods: `train_lora(method, examples, ctx, cfg) -> summary`.

`method` has a LoRA-wrapped `method.loaded` (see `llm.loading.apply_lora`) and the `score` used for validation;
`examples` are `Example(prompt, answer)` pairs (plain `(prompt, answer)` tuples work too); `cfg` is the method's
config (`max_epochs`). Feature -> config key:

- loss: cross-entropy on the answer tokens only (the prompt is labelled -100). The transformer body returns
  hidden states and the LM head runs at the answer positions only ([M, V] logits, never [B, T, V]).
  `Example.choices` restricts the softmax at the (one-token) answer to a few token ids (listwise letters).
- batches: right padded (prompt + answer, the answer's last token is never fed since nothing reads its output),
  `trainer.batch_size` examples reshuffled every epoch (seeded) and grouped by length (`length_grouped_batches`:
  little padding), `trainer.grad_accum` batches per step.
- optimizer: AdamW over the trainable parameters only (`trainer.lr`, `trainer.weight_decay`), built here,
  after the LoRA wrapping; linear warm-up over `trainer.warmup_ratio` of the steps, then linear decay;
  gradient clipping at `trainer.max_grad_norm`. bf16 autocast on CUDA; on a CPU the backbone is bf16 when
  `model.dtype=auto` measured that it pays (`llm/precision.py`), the adapters and their AdamW state stay fp32
  and the loss's logits are computed in fp32; gradient checkpointing is switched on by
  `apply_lora` from `model.gradient_checkpointing`.
- several GPUs: `accelerate launch --num_processes N -m llmrec_cli train ...` (or torchrun); each rank trains on
  every N-th example of each global batch (`trainer.batch_size` x N, length-grouped as one process would) and
  the trainable gradients are averaged before each step, rank 0 validates and saves
  (`llmrec_cli/llm/distributed.py`).
- epochs: `trainer.max_epochs` (its default is `method.max_epochs`, see `config.compose.resolve_epochs`). With one epoch there is nothing to select and the loop
  does not validate (the run's own valid evaluation still follows). Otherwise every `trainer.eval_every` epochs the valid metric
  `eval.monitor` (through `ctx.validate`) drives early stopping (`trainer.patience`), and the best epoch's
  adapter weights are restored at the end. Methods that cannot rank the full catalogue monitor
  `valid/sampled/<metric>` instead of `valid/full/<metric>`. Without `ctx.validate` every epoch runs and the
  last one is kept.
- logging per epoch (step = epoch): `train/loss`, `train/epoch_seconds` (training only),
  `train/tokens_per_second`, `train/lr`, `train/valid_seconds` and the valid metrics.
- resume: after each epoch the adapter (`adapter/`, peft format), optimizer, scheduler, loop state (epoch,
  best value, patience count, best weights) and RNG states go to `<run dir>/checkpoints/last`, atomically: a
  temporary folder is filled, a `COMPLETE` sentinel written last, then renamed into place (the previous
  checkpoint is kept as `prev` until the swap is done). With `resume=true` the run continues after the newest
  complete checkpoint whose config fingerprint matches (keys such as `method.max_epochs`, `trainer.patience`,
  `run_name` and `tracking.*` may differ), looked up in this run's folder, then in the other run folders of
  `output_dir` (each `llmrec train` gets a new folder, `<output_dir>/<run id>`).
- soft tokens (quadrant 1): a prompt may be a token-id list (special tokens included, ids beyond the vocabulary
  allowed) and `train_lora(..., embed_fn=...)` feeds `inputs_embeds=embed_fn(ids)` instead of `input_ids`;
  `extra_params=[(params, lr), ...]` (e.g. a projector at `method.projector_lr`) join the same AdamW as their
  own parameter groups, share its schedule and clipping, and are saved in the epoch checkpoints (resume) and
  in the best-epoch weights (early stopping restores them too).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec_cli.config.fingerprint import config_fingerprint
from llmrec_cli.errors import LlmrecError
from llmrec_cli.llm import distributed
from llmrec_cli.llm.scoring import right_pad
from llmrec_cli.utils.progress import progress_bar

log = logging.getLogger(__name__)

SENTINEL = "COMPLETE"
STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"
@dataclass(frozen=True)
class Example:
    """One training sample: PROMPT, then ANSWER (its tokens carry the loss; no special tokens are added).

    `choices`: token ids the answer's first token is chosen among (the softmax at that position is restricted
    to them; the answer then counts as that one token).
    """

    prompt: str | Sequence[int]  # text, or token ids with special tokens (see `Scorer`: the same ids score it)
    answer: str
    choices: tuple[int, ...] | None = None


@dataclass
class _Row:
    prompt: list[int]
    answer: list[int]
    choices: tuple[int, ...] | None


@dataclass
class LoopState:
    """What the loop needs to continue after an epoch (saved in checkpoints)."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad: int = 0  # evaluations without improvement
    best_weights: dict[str, torch.Tensor] | None = None


def train_lora(method, examples: Sequence[Example | tuple[str, str]], ctx, cfg, embed_fn: Callable | None = None,
               extra_params: Sequence[tuple[Sequence[torch.nn.Parameter], float]] = ()) -> dict[str, float]:
    """Tune METHOD's trainable (LoRA) parameters, and EXTRA_PARAMS (parameters, learning rate), on EXAMPLES;
    EMBED_FN maps input ids to input embeddings (soft tokens). Returns a summary (epochs, best epoch, ...)."""
    return LoraTrainer(method, examples, ctx, cfg, embed_fn, extra_params).run()


class LoraTrainer:
    """One training run: setup in `__init__`, `run()` for the epochs, `save_checkpoint` / `load_checkpoint`."""

    def __init__(self, method, examples, ctx, cfg, embed_fn: Callable | None = None,
                 extra_params: Sequence[tuple[Sequence[torch.nn.Parameter], float]] = ()):
        if not examples:
            raise ValueError("train_lora got no training examples")
        self.method, self.ctx = method, ctx
        self.tcfg = ctx.cfg.trainer
        self.model = method.loaded.model
        tokenizer = method.loaded.tokenizer
        self.device = torch.device(ctx.device)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.rows = encode(examples, tokenizer, int(ctx.cfg.model.max_length))
        self.epochs = int(self.tcfg.max_epochs)  # the one rule: config.compose.resolve_epochs
        self.batch_size = max(1, int(self.tcfg.batch_size))
        self.accum = max(1, int(self.tcfg.grad_accum))
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.body = getattr(lm, "base_model", lm)  # the transformer without its LM head
        self.head = _head_fn(lm)
        self.embed_fn = embed_fn
        lora = [p for p in self.model.parameters() if p.requires_grad]
        if not lora:
            raise ValueError("the model has no trainable parameters: wrap it with apply_lora first")
        groups = [{"params": list(params), "lr": float(lr)} for params, lr in extra_params]
        self.extra = [p for g in groups for p in g["params"]]  # saved with checkpoints and best weights
        self.params = lora + self.extra
        self.optimizer = torch.optim.AdamW([{"params": lora}, *groups], lr=float(self.tcfg.lr),
                                           weight_decay=float(self.tcfg.weight_decay))
        self.world = distributed.world()
        batches_per_rank = math.ceil(math.ceil(len(self.rows) / self.batch_size) / self.world.size)
        steps_per_epoch = math.ceil(batches_per_rank / self.accum)
        self.scheduler = _warmup_linear(self.optimizer, steps_per_epoch * max(self.epochs, 1),
                                        float(self.tcfg.warmup_ratio))
        self.shuffle = np.random.default_rng([int(ctx.seed), 4])
        self.monitor, self.validate = _validator(method, ctx)
        if self.epochs <= 1:  # one epoch: nothing to choose between, so no validation pass inside the loop
            self.monitor, self.validate = None, None
        self.fingerprint = config_fingerprint(ctx.cfg)
        self.ckpt_root = Path(ctx.output_dir) / "checkpoints"
        self.state = LoopState()
        self.last_lr = 0.0  # the learning rate of the epoch's last optimizer step

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, float]:
        from llmrec_cli.utils.console import epochs_line, say

        start = self._maybe_resume()
        say(epochs_line(self.tcfg if self.validate is not None else {**self.tcfg, "patience": 0},
                        f"{self.ctx.cfg.method.name} ({len(self.rows)} examples)"))
        self.ctx.log_params({"train.monitor": self.monitor or "none", "train.examples": len(self.rows),
                             "train.epochs": self.epochs})
        st = self.state
        patience = int(self.tcfg.patience)
        eval_every = max(1, int(self.tcfg.eval_every))
        times: list[float] = []
        bar = progress_bar(range(st.epoch + 1, self.epochs + 1), desc="train lora", enabled=self.ctx.progress)
        for epoch in bar:
            if self.validate is not None and st.bad >= patience:
                break  # the resumed run had already stopped early
            loss, tokens, seconds = self.train_epoch(epoch)
            times.append(seconds)
            logged = {"train/loss": loss, "train/epoch_seconds": seconds,
                      "train/tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
                      "train/lr": self.last_lr}
            if self.validate is not None and (epoch % eval_every == 0 or epoch == self.epochs):
                logged.update(self._evaluate(epoch))
            st.epoch = epoch
            self.ctx.log_metrics(logged, epoch)
            if self.world.is_main:
                self.save_checkpoint()
            if self.validate is not None and st.bad >= patience:
                log.info("early stop at epoch %d (best %s=%.4f at epoch %d)", epoch, self.monitor, st.best,
                         st.best_epoch)
                break
        if st.best_weights is not None:
            self._set_weights(st.best_weights)
        self.model.eval()
        out = {"epochs": float(st.epoch), "start_epoch": float(start + 1), "examples": float(len(self.rows)),
               "seconds_per_epoch": float(np.mean(times)) if times else 0.0}
        if self.validate is not None:
            out.update({"best_epoch": float(st.best_epoch), f"best/{self.monitor}": float(st.best)})
        return out

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """One pass over the shuffled examples: (mean loss per example, tokens fed, seconds)."""
        self.model.train()
        size = self.world.size if self.world.active else 1
        # Batches of the global size (batch_size x ranks), so N processes step exactly like one process with an
        # N times larger batch; each rank takes every N-th example of each (a batch too small for every rank
        # lends its first example to the ranks left without one).
        batches = length_grouped_batches([len(r.prompt) + len(r.answer) for r in self.rows],
                                         self.batch_size * size, self.shuffle)
        if self.world.active:
            batches = [b[self.world.rank::size] if len(b) > self.world.rank else b[:1] for b in batches]
        total_loss, total_tokens, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for k, idx in enumerate(progress_bar(batches, desc=f"epoch {epoch}", enabled=self.ctx.progress)):
            ids, mask, labels, allowed = collate([self.rows[i] for i in idx], self.pad_id, self.device)
            with self._autocast():
                loss = answer_loss(self.body, self.head, ids, mask, labels, allowed, self.embed_fn)
            (loss / self.accum).backward()
            total_loss += float(loss.detach()) * len(idx)
            total_tokens += int(mask.sum())
            seen += len(idx)
            if (k + 1) % self.accum == 0 or k == len(batches) - 1:
                distributed.average_gradients(self.params)
                if float(self.tcfg.max_grad_norm) > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, float(self.tcfg.max_grad_norm))
                self.last_lr = float(self.optimizer.param_groups[0]["lr"])
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total_loss, seen, total_tokens = distributed.sum_across(total_loss, seen, total_tokens)
        return total_loss / max(seen, 1), int(total_tokens), time.perf_counter() - t0

    def _evaluate(self, epoch: int) -> dict[str, float]:
        st = self.state
        t0 = time.perf_counter()
        valid = distributed.broadcast(dict(self.validate()) if self.world.is_main else None)  # rank 0 validates
        valid["train/valid_seconds"] = time.perf_counter() - t0
        value = valid.get(self.monitor)
        if value is None:
            raise KeyError(f"eval.monitor={self.monitor} is not among the valid metrics {sorted(valid)}")
        if value > st.best:
            st.best, st.best_epoch, st.bad = float(value), epoch, 0
            st.best_weights = self._weights()
        else:
            st.bad += 1
        return valid

    def _autocast(self):
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _weights(self) -> dict[str, torch.Tensor]:
        out = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad}
        out.update({f"extra.{i}": p.detach().to("cpu", copy=True) for i, p in enumerate(self.extra)})
        return out

    def _set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in [*self.model.named_parameters(), *((f"extra.{i}", p) for i, p in enumerate(self.extra))]:
                if n in weights:
                    p.copy_(weights[n].to(p.device, p.dtype))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/last` atomically (temp folder + sentinel + os.replace); returns its path."""
        root = self.ckpt_root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-write
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        self.model.save_pretrained(str(tmp / ADAPTER_DIR))
        st = self.state
        torch.save({"epoch": st.epoch, "step": st.step, "best": st.best, "best_epoch": st.best_epoch,
                    "bad": st.bad, "best_weights": st.best_weights, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": _rng_state(self.shuffle),
                    "monitor": self.monitor, "extra": [p.detach().cpu() for p in self.extra]}, tmp / STATE_FILE)
        (tmp / SENTINEL).write_text(json.dumps({"epoch": st.epoch, "fingerprint": self.fingerprint}) + "\n")
        last, prev = root / "last", root / "prev"
        if last.exists():
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(last, prev)
        os.replace(tmp, last)
        shutil.rmtree(prev, ignore_errors=True)
        return last

    def load_checkpoint(self, path: Path) -> None:
        """Restore adapter (and extra) weights, optimizer, scheduler, loop and RNG state from a checkpoint folder."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"),
                                                        device=str(self.device)))
        saved = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)  # our own file
        extra = saved.get("extra", [])
        if len(extra) != len(self.extra) or any(t.shape != p.shape for t, p in zip(extra, self.extra, strict=False)):
            raise LlmrecError(f"resume=true: {path} holds {len(extra)} extra tensors (e.g. a projector) that do not "
                              f"match this run's {len(self.extra)}: use resume=false or the checkpoint's settings")
        with torch.no_grad():
            for p, t in zip(self.extra, extra, strict=True):
                p.copy_(t.to(p.device, p.dtype))
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(self.scheduler.last_epoch)  # this run's schedule (epochs may differ)
        self.state = LoopState(epoch=saved["epoch"], step=saved["step"], best=saved["best"],
                               best_epoch=saved["best_epoch"], bad=saved["bad"], best_weights=saved["best_weights"])
        _set_rng_state(saved["rng"], self.shuffle)

    def _maybe_resume(self) -> int:
        """With `resume=true`, load the newest matching checkpoint; returns the epoch it ended (0: none)."""
        from llmrec_cli.utils.console import say

        if not bool(self.ctx.cfg.get("resume", False)):
            return 0
        found = find_checkpoint(Path(self.ctx.output_dir), self.fingerprint)
        if found is None:
            say(f"resume=true: no complete epoch checkpoint of this configuration under "
                f"{Path(self.ctx.output_dir).parent}: training starts at epoch 1")
            return 0
        self.load_checkpoint(found)
        say(f"resume=true: resuming {self.ctx.cfg.method.name} from {found} after epoch {self.state.epoch} "
            f"(of {self.epochs})")
        self.ctx.log_params({"train.resumed_from": str(found), "train.resumed_epoch": self.state.epoch})
        return self.state.epoch


# ---------------------------------------------------------------------- batches and loss


def encode(examples: Sequence[Example | tuple[str, str]], tokenizer, max_length: int) -> list[_Row]:
    """Token ids per example: the prompt with special tokens exactly as the Scorer encodes it
    (`tokens.encode_prompts`: no doubled BOS; token-id prompts as given), the answer without; prompts are fitted
    by the prompt builder, and one still too long keeps its last tokens so that prompt + answer[:-1] fits in
    MAX_LENGTH."""
    from llmrec_cli.llm.tokens import encode_prompts

    examples = [e if isinstance(e, Example) else Example(*e) for e in examples]
    prompts = [None if isinstance(e.prompt, str) else list(e.prompt) for e in examples]
    texts = [i for i, p in enumerate(prompts) if p is None]
    if texts:
        encoded = encode_prompts(tokenizer, [examples[i].prompt for i in texts])
        for i, ids in zip(texts, encoded, strict=True):
            prompts[i] = ids
    answers = tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for e, p, a in zip(examples, prompts, answers, strict=True):
        if not a:
            raise ValueError(f"answer {e.answer!r} has no token")
        if e.choices is not None:
            a = a[:1]
            if a[0] not in e.choices:
                raise ValueError(f"answer {e.answer!r} (token {a[0]}) is not among its choices {e.choices}")
        keep = max(1, max_length - len(a) + 1)
        rows.append(_Row(list(p[-keep:]), list(a), tuple(e.choices) if e.choices is not None else None))
    return rows


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                           group: int = 32) -> list[np.ndarray]:
    """Batches of indices for one epoch: a seeded shuffle, cut into groups of GROUP batches, each group sorted by
    length before it is cut into batches, and the batches shuffled; so a batch holds prompts of similar length
    (little padding) while every epoch still sees a new random mix."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    span = batch_size * group
    batches = []
    for s in range(0, len(order), span):
        chunk = order[s:s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(rows: Sequence[_Row], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, labels, choices) for right-padded prompt + answer[:-1].

    `labels[r, t]` is the token position t must predict (-100 on the prompt and the padding). `choices` is
    None, or [M, C] token ids allowed at each of the M labelled positions (row-major order), -1 padded; a
    row of -1 allows the whole vocabulary.
    """
    ids, mask = right_pad([r.prompt + r.answer[:-1] for r in rows], pad_id)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        start = len(r.prompt) - 1  # the last prompt position predicts the first answer token
        labels[i, start:start + len(r.answer)] = torch.as_tensor(r.answer, dtype=torch.long)
    choices = None
    if any(r.choices is not None for r in rows):
        width = max(len(r.choices) for r in rows if r.choices is not None)
        choices = torch.full((sum(len(r.answer) for r in rows), width), -1, dtype=torch.long)
        m = 0
        for r in rows:
            if r.choices is not None:
                choices[m, :len(r.choices)] = torch.as_tensor(r.choices, dtype=torch.long)
            m += len(r.answer)
        choices = choices.to(device)
    return ids.to(device), mask.to(device), labels.to(device), choices


def answer_loss(body, head: Callable, ids, mask, labels, choices=None,
                embed_fn: Callable | None = None) -> torch.Tensor:
    """Mean cross-entropy at the labelled positions; the LM head runs on those hidden states only.

    With CHOICES (see `collate`) the softmax of a restricted position runs over its allowed tokens only. With
    EMBED_FN the body gets `inputs_embeds=embed_fn(ids)` (soft tokens) instead of the ids."""
    inputs = {"input_ids": ids} if embed_fn is None else {"inputs_embeds": embed_fn(ids)}
    hidden = body(**inputs, attention_mask=mask, use_cache=False).last_hidden_state
    where = labels != -100
    logits = head(hidden[where])  # [M, V] float32
    if choices is not None:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[(choices < 0).all(dim=1)] = True
        row, col = (choices >= 0).nonzero(as_tuple=True)
        keep[row, choices[row, col]] = True
        logits = logits.masked_fill(~keep, -torch.inf)
    return torch.nn.functional.cross_entropy(logits, labels[where])


def _head_fn(lm) -> Callable:
    """The LM head as a function of hidden states -> fp32 logits: the Scorer's `LMHead`, so training and scoring
    read the same logits."""
    from llmrec_cli.llm.head import LMHead

    if lm.get_output_embeddings() is None:
        raise TypeError(f"{type(lm).__name__} has no LM head: only causal LMs can be tuned with train_lora")
    return LMHead(lm)


def _warmup_linear(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over `warmup_ratio` of TOTAL_STEPS (first step at 1/warmup of the peak), then linear
    decay towards 0 (the last step still moves)."""
    warmup = math.ceil(max(0.0, warmup_ratio) * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _validator(method, ctx) -> tuple[str | None, Callable[[], dict[str, float]] | None]:
    """(monitor name, function returning valid metrics), or (None, None) without `ctx.validate`.

    The monitor is `eval.monitor`, read through `ctx.monitor_name`: a `full` monitor becomes the sampled
    protocol's metric for methods with `supports_full = False` (the evaluator skips `full` for them).
    """
    if ctx.validate is None:
        return None, None
    return ctx.monitor_name(method), lambda: ctx.validate(method)


# ---------------------------------------------------------------------- resume helpers


def complete_checkpoint(path: Path, fingerprint: str | None = None) -> bool:
    """Whether PATH holds a finished checkpoint (its sentinel), of FINGERPRINT when given."""
    sentinel = path / SENTINEL
    if not sentinel.is_file():
        return False
    try:
        info = json.loads(sentinel.read_text())
    except (OSError, ValueError):
        return False
    return fingerprint is None or info.get("fingerprint") == fingerprint


def find_checkpoint(run_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume: this run's `checkpoints/last` (or `prev`, if a swap was interrupted), else the
    newest complete, matching one among the other run folders beside RUN_DIR."""
    for name in ("last", "prev"):
        if complete_checkpoint(run_dir / "checkpoints" / name, fingerprint):
            return run_dir / "checkpoints" / name
    found = [c for c in run_dir.parent.glob("*/checkpoints/*") if c.name in ("last", "prev")
             and c.parent.parent != run_dir and complete_checkpoint(c, fingerprint)]
    return max(found, key=lambda c: (c / SENTINEL).stat().st_mtime_ns) if found else None


def _rng_state(shuffle: np.random.Generator) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "shuffle": shuffle.bit_generator.state}


def _set_rng_state(state: dict[str, Any], shuffle: np.random.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.bit_generator.state = state["shuffle"]
