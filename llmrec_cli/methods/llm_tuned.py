"""The tuned-LLM recipe (quadrants 1 and 4): one pipeline composed of small parts chosen by config.

    TunedLLM(cfg, ctx, head=PointwiseHead() | ListwiseHead(), items=TitleItems() | SoftItems(...))

- head (`llmrec_cli/methods/heads.py`): what the LLM answers (Yes/No, or a candidate's letter), how the
  method's own training samples are built from a target, and how the answer scores candidates;
- items: how an item appears in a prompt: `TitleItems` (its text: quadrant 4) or `SoftItems` (CRM vectors through
  a trained projector as soft tokens, with or without the title: quadrant 1, `llmrec_cli/methods/q1_collm.py`);
- training samples (`llmrec_cli/methods/samples.py`): `method.samples_per_user` targets per user, a
  `method.num_samples` budget, `method.train_negatives=uniform|crm`, `method.aux_tasks=[mim, bpr]` at
  `method.aux_ratio`;
- the adapter: LoRA on the backbone (`model.peft`, adapters initialised from `seed`; `model.peft.top_layers`);
- the loop: `llmrec_cli.llm.training.train_lora` (answer-position loss with the same fp32 LM head the Scorer
  reads at scoring time, `llmrec_cli/llm/head.py`).

`tallrec` is the recipe with the pointwise head and titles, `listwise_lora` with the listwise head and titles,
`collm` with either head and soft tokens: each is a few lines in its own module. Adding a tuned method is a new
head or item representation plus one factory, one YAML and one test (README: "Adding things").

- `fit`: set up the items' CRM (if any), the backbone with LoRA, the scorer and the prompt builder; log the
  template, an example prompt and the verbalizer; build the samples from the training view only; render and tune.
- prompts: `make_prompt(user, history, **fields)` builds training and scoring prompts alike (the history is the
  items the prompt may show: a training prefix, or the history the evaluator hands to `score`), fitted into
  `model.max_length` with `ANSWER_RESERVE` tokens left for the answer; soft-token items return token ids and
  `show` renders a prompt for the logs.
- `save`: `adapter/` (peft `save_pretrained`) in the run's checkpoint folder, i.e. the MLflow artifact
  `checkpoint/adapter/adapter_model.safetensors`, plus a top-level artifact `adapter/manifest.json` (the
  adapter config, files and sha256), and what the items need (quadrant 1: `projector.pt`, `crm.pt`).
- `load`: rebuild the backbone and load the adapter with `PeftModel.from_pretrained` (`llmrec eval`).
- cost: `cost/train_seconds` (training and its validations); the scoring figures count evaluation only.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from llmrec_cli.llm.prompts import LETTERS, TEMPLATES, PromptBuilder
from llmrec_cli.methods.llm_base import LLMMethod
from llmrec_cli.methods.samples import (
    Sample,
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


class TitleItems:
    """Items as their text in the prompt (quadrant 4): no CRM, plain text prompts."""

    name = "title"
    prompt_builder = PromptBuilder
    crm = None
    soft = None

    def check(self, m) -> None:
        pass

    def before_backbone(self, m) -> None:
        pass

    def after_backbone(self, m) -> None:
        pass

    def prompt_options(self, m) -> dict:
        return {}

    def history_lead(self, m, user: int, history: np.ndarray) -> str:
        return ""

    def encode(self, m, text: str):
        return text

    def show(self, m, prompt) -> str:
        return prompt

    def train_options(self, m) -> dict:
        return {}

    def negative_crm(self, m):
        """`method.train_negatives=crm` reads the `candidates=crm_topk` pre-filter, when there is one."""
        return m.prefilter

    def log_prompting(self, m) -> None:
        pass

    def save(self, m, path: Path) -> list[Path]:
        return []

    def load(self, m, path: Path) -> None:
        pass


class TunedLLM(LLMMethod):
    """The recipe (see the module docstring); `head` and `items` are its parts."""

    supports_full = False  # one LLM call per user x item over the whole catalogue is not affordable

    def __init__(self, cfg, ctx, head, items):
        super().__init__(cfg, ctx)
        self.head, self.items = head, items
        self.score_kind = head.score_kind
        self.order_sensitive = head.order_sensitive

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def crm(self):
        """The items' CRM (quadrant 1's soft tokens), None for titles."""
        return self.items.crm

    @crm.setter
    def crm(self, value) -> None:
        self.items.crm = value

    @property
    def soft(self):
        return self.items.soft

    # ---- the pipeline ---------------------------------------------------------------------------------
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
        summary = train_lora(self, examples, self.ctx, self.cfg, **self.items.train_options(self))
        self._cost["cost/train_seconds"] = time.perf_counter() - t0
        self._reset_scoring_cost()  # validation during training is not inference cost
        return summary

    def check_config(self) -> None:
        """Raise ConfigError for settings the method cannot run with (before loading the model)."""
        from llmrec_cli.errors import ConfigError

        n = self.cfg.num_samples
        if n is not None and int(n) < 1:
            raise ConfigError(f"method.num_samples={n} must be >= 1 or null (all training samples)")
        check_sample_config(self.cfg)
        self.head.check(self)
        self.items.check(self)

    def setup_tuned(self, adapter_dir: Path | None = None) -> None:
        """The items' CRM, backbone + LoRA adapters (new ones, or ADAPTER_DIR's), the scorer over them and the
        prompt builder, then the items' soft tokens (if any)."""
        import torch

        from llmrec_cli.llm.loading import apply_lora
        from llmrec_cli.llm.scoring import Scorer

        self.items.before_backbone(self)
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
        self.prompts = self.items.prompt_builder(
            self.data, self.loaded.tokenizer, noun=self.ctx.cfg.dataset.item_noun,
            max_history=int(self.cfg.max_history), history_tokens=int(self.cfg.history_tokens),
            use_chat_template=bool(self.cfg.use_chat_template), num_demos=0, seed=self.ctx.seed,
            max_length=int(model_cfg.max_length), item_text=str(self.cfg.get("item_text", "full")),
            **self.items.prompt_options(self))
        lora = sum(p.numel() for n, p in self.loaded.model.named_parameters() if "lora_" in n)
        self.ctx.log_params({"lora.num_parameters": lora,
                             "lora.trainable_pct": round(100.0 * lora / max(self.loaded.num_parameters, 1), 4),
                             "recipe.head": self.head.name, "recipe.items": self.items.name})
        self.items.after_backbone(self)

    # ---- training samples -----------------------------------------------------------------------------
    def training_samples(self, data, rng: np.random.Generator) -> list[Sample]:
        """The head's samples for the budgeted targets, plus the auxiliary tasks."""
        cfg = self.cfg
        targets = training_targets(data, int(cfg.get("samples_per_user", 1)))
        if not targets:
            from llmrec_cli.errors import DataError

            raise DataError(f"dataset={self.ctx.cfg.dataset.name} gives no training sample for "
                            f"method={cfg.name}: users need at least 2 training interactions")
        budget = None if cfg.num_samples is None else int(cfg.num_samples)
        chosen = budget_targets(targets, budget, self.head.prompts_per_target(self), rng)
        negatives = negative_source(str(cfg.get("train_negatives", "uniform")), data, rng,
                                    self.items.negative_crm(self))
        main = trim(self.head.target_samples(self, chosen, negatives, rng), budget, rng)
        aux = aux_samples(data, targets if budget is None else chosen, cfg.get("aux_tasks") or [],
                          float(cfg.get("aux_ratio", 0.0)), len(main), int(self.ctx.cfg.eval.num_negatives) + 1,
                          rng, int(cfg.max_history))
        return main + aux

    def render(self, sample: Sample):
        """A `llmrec_cli.llm.training.Example`: the head's for a `next` sample, a letter prompt for `mim` / `bpr`."""
        if sample.task == "next":
            return self.head.render(self, sample)
        from llmrec_cli.llm.training import Example

        kind = "mim" if sample.task == "mim" else "listwise"
        prompt = self.make_prompt(sample.user, sample.history, kind=kind,
                                  candidates=self.prompts.candidate_block(sample.items))
        from llmrec_cli.methods.heads import letter_ids

        return Example(prompt, self.prompts.answer_prefix + LETTERS[sample.answer],
                       choices=letter_ids(self, len(sample.items)))

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

    # ---- prompts and scoring --------------------------------------------------------------------------
    def make_prompt(self, user: int, history: np.ndarray, kind: str | None = None, **fields):
        """USER's prompt showing HISTORY with the template's other FIELDS (candidate / candidates); KIND: the
        template (default: the head's). Text, or token ids with soft tokens."""
        text = self.prompts.build(kind or self.kind, user, history, demos=False,
                                  lead=self.items.history_lead(self, user, history), reserve=ANSWER_RESERVE,
                                  **fields)
        return self.items.encode(self, text)

    def show(self, prompt) -> str:
        """A prompt as text for the logs."""
        return self.items.show(self, prompt)

    def score(self, users, histories, items):
        return self.head.score(self, users, histories, items)

    def example_user(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(user, history, candidates) for the example prompt: the first user with >= 4 training items shows
        all but their last 3, which are the candidates."""
        for u in range(self.data.n_users):
            seq = self.data.train_sequence(u)
            if len(seq) >= 4:
                return u, seq[:-3], seq[-3:]
        seq = self.data.train_sequence(0)
        return 0, seq[:-1], seq[-1:]

    def log_prompting(self) -> None:
        self.ctx.log_text(TEMPLATES[self.kind], f"prompts/template_{self.kind}.txt")
        u, history, cands = self.example_user()
        self.ctx.log_text(self.show(self.make_prompt(u, history, **self.head.fields(self, cands))),
                          "prompts/example.txt")
        self.ctx.log_params({"prompt.chat_template": self.prompts.chat,
                             "prompt.answer_prefix": repr(self.prompts.answer_prefix),
                             **self.head.verbalizer_params(self)})
        self.items.log_prompting(self)

    def _reset_scoring_cost(self) -> None:
        self._cost["cost/score_seconds"] = 0.0
        self._users_scored = 0
        self.scorer.reset_stats()

    # ---- checkpoint -----------------------------------------------------------------------------------
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
        files += super().save(path)  # the candidates=crm_topk pre-filter, if any
        return files + [f for f in self.items.save(self, Path(path)) if f not in files]

    def load(self, path: Path, data) -> None:
        self.data = data
        self.load_dir = Path(path)
        self.items.load(self, Path(path))
        self.setup_tuned(adapter_dir=Path(path) / "adapter")
        self.log_prompting()
