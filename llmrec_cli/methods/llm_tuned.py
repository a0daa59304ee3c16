"""Shared plumbing of tuned LLM methods (quadrant 4): LoRA on the backbone, training samples, adapter files.

- `fit`: load the backbone (`LLMMethod.setup_llm`), wrap it with LoRA (`model.peft`; adapters initialised
  from `seed`), log the prompt template, an example and the verbalizer, build the training samples from
  training data only (`llmrec_cli/methods/samples.py`: `method.samples_per_user` targets per user, a
  `method.num_samples` budget, `method.train_negatives=uniform|crm`, `method.aux_tasks=[mim, bpr]` at
  `method.aux_ratio`; each method's own samples from `target_samples`), render them as prompts (`render`) and
  tune with `llmrec_cli.llm.training.train_lora` (`train_options`: extra arguments such as quadrant 1's
  soft-token `embed_fn` and projector parameters).
- prompts: `make_prompt(user, history, **fields)` builds training and scoring prompts alike (the history is
  the items the prompt may show: a training prefix, or the history the evaluator hands to `score`), fitted
  into `model.max_length` with `ANSWER_RESERVE` tokens left for the answer; quadrant 1 overrides it to return
  token ids with soft tokens, and `show` renders a prompt for the logs.
- training data: the `TrainView` only; negatives are items outside the user's training sequence (as BPR's),
  so the training distribution does not depend on any held-out valid/test label.
- `save`: `adapter/` (peft `save_pretrained`) in the run's checkpoint folder, i.e. the MLflow artifact
  `checkpoint/adapter/adapter_model.safetensors`, plus a top-level artifact `adapter/manifest.json` (the
  adapter config, files and sha256).
- `load`: rebuild the backbone and load the adapter with `PeftModel.from_pretrained` (`llmrec eval`).
- cost: `cost/train_seconds` (training and its validations); the scoring figures count evaluation only.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from llmrec_cli.llm.prompts import TEMPLATES, PromptBuilder
from llmrec_cli.methods.llm_base import LLMMethod
from llmrec_cli.methods.samples import (
    Sample,
    Target,
    aux_samples,
    budget_targets,
    check_sample_config,
    negative_source,
    training_targets,
    trim,
)
from llmrec_cli.utils.io import sha256_file

#: Tokens kept free after a tuned method's prompt for its answer (" Yes", " A", ...).
ANSWER_RESERVE = 4


class TunedLLMMethod(LLMMethod):
    """Base of quadrant-4 methods. Subclasses set `kind` (the prompt template) and implement
    `target_samples`, `render_target`, `verbalizer_params`, `example_prompt` and `score`."""

    supports_full = False  # one LLM call per user x item over the whole catalogue is not affordable
    kind = "pointwise"  # pointwise | listwise: the template of llmrec_cli/llm/prompts.py
    prompt_builder = PromptBuilder  # quadrant 1: a builder whose item texts carry soft-token markers

    def fit(self, data):
        self.data = data
        self.check_config()
        self.setup_tuned()
        self.log_prompting()
        samples = self.training_samples(data, np.random.default_rng([self.ctx.seed, 11]))
        examples = [self.render(s) for s in samples]
        self.log_samples(samples, examples)
        from llmrec_cli.llm.training import train_lora

        t0 = time.perf_counter()
        summary = train_lora(self, examples, self.ctx, self.cfg, **self.train_options())
        self._cost["cost/train_seconds"] = time.perf_counter() - t0
        self._reset_scoring_cost()  # validation during training is not inference cost
        return summary

    def training_samples(self, data, rng: np.random.Generator) -> list[Sample]:
        """The method's own samples (`target_samples`) for the budgeted targets, plus the auxiliary tasks."""
        cfg = self.cfg
        targets = training_targets(data, int(cfg.get("samples_per_user", 1)))
        if not targets:
            from llmrec_cli.errors import DataError

            raise DataError(f"dataset={self.ctx.cfg.dataset.name} gives no training sample for "
                            f"method={cfg.name}: users need at least 2 training interactions")
        budget = None if cfg.num_samples is None else int(cfg.num_samples)
        chosen = budget_targets(targets, budget, self.prompts_per_target(), rng)
        negatives = negative_source(str(cfg.get("train_negatives", "uniform")), data, rng, self.negative_crm())
        main = trim(self.target_samples(chosen, negatives, rng), budget, rng)
        aux = aux_samples(data, targets if budget is None else chosen, cfg.get("aux_tasks") or [],
                          float(cfg.get("aux_ratio", 0.0)), len(main), self.aux_candidates(), rng,
                          int(cfg.max_history))
        return main + aux

    def render(self, sample: Sample):
        """A `llmrec_cli.llm.training.Example` for one sample: `render_target` for the method's own task, the
        letter prompts of `mim` / `bpr` otherwise."""
        if sample.task == "next":
            return self.render_target(sample)
        from llmrec_cli.llm.prompts import LETTERS
        from llmrec_cli.llm.training import Example

        kind = "mim" if sample.task == "mim" else "listwise"
        prompt = self.make_prompt(sample.user, sample.history, kind=kind,
                                  candidates=self.prompts.candidate_block(sample.items))
        letters = tuple(self.scorer.verbalizer_ids(LETTERS[: len(sample.items)], prefix=self.prompts.answer_prefix))
        return Example(prompt, self.prompts.answer_prefix + LETTERS[sample.answer], choices=letters)

    def log_samples(self, samples: list[Sample], examples: list) -> None:
        counts = {task: sum(s.task == task for s in samples) for task in ("next", "mim", "bpr")}
        self.ctx.log_params({"train.samples_next": counts["next"], "train.samples_mim": counts["mim"],
                             "train.samples_bpr": counts["bpr"],
                             "train.negatives": str(self.cfg.get("train_negatives", "uniform"))})
        shown = [f"{self.show(examples[0].prompt)}{examples[0].answer}"]
        for task in ("mim", "bpr"):
            k = next((i for i, s in enumerate(samples) if s.task == task), None)
            if k is not None:
                shown.append(f"--- {task} ---\n{self.show(examples[k].prompt)}{examples[k].answer}")
        self.ctx.log_text("\n\n".join(shown), "prompts/train_example.txt")

    # ---- hooks --------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        """Raise ConfigError for settings the method cannot run with (before loading the model)."""
        from llmrec_cli.errors import ConfigError

        n = self.cfg.num_samples
        if n is not None and int(n) < 1:
            raise ConfigError(f"method.num_samples={n} must be >= 1 or null (all training samples)")
        check_sample_config(self.cfg)

    def prompts_per_target(self) -> int:
        """Prompts `target_samples` makes per target (the budget counts prompts)."""
        return 1

    def target_samples(self, targets: list[Target], negatives, rng: np.random.Generator) -> list[Sample]:
        """The method's own samples (task `next`) for TARGETS; NEGATIVES(targets, k) gives k negatives each."""
        raise NotImplementedError

    def render_target(self, sample: Sample):
        """The `Example` of a `next` sample."""
        raise NotImplementedError

    def negative_crm(self):
        """The CRM `method.train_negatives=crm` reads: the `candidates=crm_topk` pre-filter, when there is one."""
        return self.prefilter

    def aux_candidates(self) -> int:
        """Candidates of a `mim` prompt: as many as the sampled protocol shows."""
        return int(self.ctx.cfg.eval.num_negatives) + 1

    def verbalizer_params(self) -> dict:
        raise NotImplementedError

    def example_prompt(self) -> str:
        """A scoring prompt (user 0's training sequence: all but its last items shown) for `prompts/example.txt`."""
        raise NotImplementedError

    def example_user(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(user, history, candidates) for the example prompt: the first user with >= 4 training items shows
        all but their last 3, which are the candidates."""
        for u in range(self.data.n_users):
            seq = self.data.train_sequence(u)
            if len(seq) >= 4:
                return u, seq[:-3], seq[-3:]
        seq = self.data.train_sequence(0)
        return 0, seq[:-1], seq[-1:]

    # ---- shared -------------------------------------------------------------------------------------------
    def setup_tuned(self, adapter_dir: Path | None = None) -> None:
        """Backbone + LoRA adapters (new ones, or ADAPTER_DIR's), the scorer over them and the prompt builder."""
        import torch

        from llmrec_cli.llm.loading import apply_lora
        from llmrec_cli.llm.scoring import Scorer

        self.setup_llm()
        model_cfg = self.ctx.cfg.model
        if adapter_dir is None:
            torch.manual_seed(self.ctx.seed)  # adapter init from the run seed (backbone loading may re-seed)
            self.loaded = apply_lora(self.loaded, model_cfg.peft, bool(model_cfg.gradient_checkpointing))
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(self.loaded.model, str(adapter_dir))
            model.eval()
            self.loaded = dataclasses.replace(self.loaded, model=model)
        self.scorer = Scorer(self.loaded.model, self.loaded.tokenizer, self.ctx.device,
                             batch_size=int(self.cfg.batch_size), max_length=int(model_cfg.max_length))
        self.prompts = self.prompt_builder(self.data, self.loaded.tokenizer, noun=self.ctx.cfg.dataset.item_noun,
                                           max_history=int(self.cfg.max_history),
                                           history_tokens=int(self.cfg.history_tokens),
                                           use_chat_template=bool(self.cfg.use_chat_template), num_demos=0,
                                           seed=self.ctx.seed, max_length=int(model_cfg.max_length),
                                           **self.prompt_options())
        lora = sum(p.numel() for n, p in self.loaded.model.named_parameters() if "lora_" in n)
        self.ctx.log_params({"lora.num_parameters": lora,
                             "lora.trainable_pct": round(100.0 * lora / max(self.loaded.num_parameters, 1), 4)})

    def make_prompt(self, user: int, history: np.ndarray, kind: str | None = None, **fields):
        """USER's prompt showing HISTORY (training samples: a prefix of the training sequence; scoring: the
        history the evaluator passed), with the template's other FIELDS (candidate / candidates); KIND: the
        template (default: the method's own)."""
        return self.prompts.build(kind or self.kind, user, history, demos=False,
                                  lead=self.history_lead(user, history), reserve=ANSWER_RESERVE, **fields)

    def prompt_options(self) -> dict:
        """Extra keyword arguments of the prompt builder (quadrant 1 adds `item_repr`)."""
        return {"item_text": str(self.cfg.get("item_text", "full"))}

    def history_lead(self, user: int, history: np.ndarray) -> str:
        """Text placed before the history lines (quadrant 1: the user's soft token); none here."""
        return ""

    def show(self, prompt) -> str:
        """A prompt as text for the logs."""
        return prompt

    def train_options(self) -> dict:
        """Extra keyword arguments of `train_lora` (none here)."""
        return {}

    def log_prompting(self) -> None:
        self.ctx.log_text(TEMPLATES[self.kind], f"prompts/template_{self.kind}.txt")
        self.ctx.log_text(self.example_prompt(), "prompts/example.txt")
        self.ctx.log_params({"prompt.chat_template": self.prompts.chat,
                             "prompt.answer_prefix": repr(self.prompts.answer_prefix), **self.verbalizer_params()})

    def _reset_scoring_cost(self) -> None:
        self._cost["cost/score_seconds"] = 0.0
        self._users_scored = 0
        self.scorer.reset_stats()

    def save(self, path: Path) -> list[Path]:
        out = Path(path) / "adapter"
        self.loaded.model.save_pretrained(str(out))
        files = sorted(p for p in out.rglob("*") if p.is_file())
        config_file = out / "adapter_config.json"
        manifest = {
            "weights": "checkpoint/adapter/adapter_model.safetensors",
            "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
            "adapter_config": json.loads(config_file.read_text()) if config_file.is_file() else None,
        }
        self.ctx.log_text(json.dumps(manifest, indent=2, sort_keys=True, default=str), "adapter/manifest.json")
        return files + super().save(path)  # + the candidates=crm_topk pre-filter, if any

    def load(self, path: Path, data) -> None:
        self.data = data
        self.load_dir = Path(path)
        self.setup_tuned(adapter_dir=Path(path) / "adapter")
        self.log_prompting()
