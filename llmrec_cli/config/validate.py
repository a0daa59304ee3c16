"""`llmrec validate` and `llmrec ls`: walk every config group and the registries."""
from __future__ import annotations

from omegaconf import OmegaConf

from llmrec_cli.config.compose import compose_run, conf_dir, group_options
from llmrec_cli.errors import LlmrecError


def _describe(group: str, name: str, max_chars: int = 160) -> str:
    """The YAML's first comment paragraph after its command line, in whole sentences: as many as fit in
    MAX_CHARS (at least the first one), never cut mid-sentence."""
    import re

    lines = (conf_dir() / group / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    head = []
    for ln in lines:
        if not ln.startswith("#"):
            break
        if "@package" not in ln:
            head.append(ln.lstrip("#").strip())
    if len(head) > 1 and head[0].startswith("llmrec "):
        head = head[1:]  # the command the YAML starts with
    paragraph = " ".join(head)
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", paragraph)
    out = sentences[0] if sentences else ""
    for sentence in sentences[1:]:
        if len(out) + 1 + len(sentence) > max_chars:
            break
        out += " " + sentence
    return out


def catalogue() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for group in ("dataset", "quadrant", "method", "crm", "candidates", "model", "eval", "protocol", "trainer", "experiment",
                  "arm"):
        rows = []
        for name in group_options(group):
            desc = _describe(group, name)
            if group == "method":
                desc = f"[quadrant {OmegaConf.load(conf_dir() / group / f'{name}.yaml').quadrant}] {desc}"
            rows.append((name, desc))
        out[group] = rows
    return out


def _with_schema(group: str, name: str, schema):
    """A group YAML merged onto its schema's defaults (without composing the whole run)."""
    raw = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(schema), raw)


def combinations(full: bool = False) -> list[list[str]]:
    """Method (with its quadrant) x CRM x usable model, and every other group option with the defaults.

    `full`: every valid (method, CRM, model) triple. Otherwise every valid pair: each (method, CRM) with the
    first model that fits the method and each (method, model) with the first CRM that fits, which covers every
    two-group interaction in about a third of the compositions."""
    from llmrec_cli.config.compose import model_problem
    from llmrec_cli.config.schema import MethodConfig, ModelConfig
    from llmrec_cli.methods.configs import SCHEMAS

    combos: list[list[str]] = []
    models = {name: _with_schema("model", name, ModelConfig) for name in group_options("model")}
    for method in group_options("method"):
        method_cfg = _with_schema("method", method, SCHEMAS.get(method, MethodConfig))
        valid = [(crm, model) for crm in group_options("crm") for model, model_cfg in models.items()
                 if not model_problem(method_cfg, model_cfg) and not (method_cfg.get("needs_crm") and crm == "pop")]
        if not full:  # an LLM method without an LLM, a CRM component without embeddings: not combinations
            firsts = {}
            for crm, model in valid:
                firsts.setdefault(("crm", crm), (crm, model))
                firsts.setdefault(("model", model), (crm, model))
            valid = list(dict.fromkeys(firsts.values()))
        combos.extend([f"method={method}", f"crm={crm}", f"model={model}"] for crm, model in valid)
    for quadrant in group_options("quadrant"):
        default = OmegaConf.load(conf_dir() / "quadrant" / f"{quadrant}.yaml").default_method
        method_cfg = _with_schema("method", default, SCHEMAS.get(default, MethodConfig))
        model = next(m for m, cfg in models.items() if not model_problem(method_cfg, cfg))
        combos.append([f"quadrant={quadrant}", f"model={model}"])
    for group in ("dataset", "eval", "protocol", "trainer", "tracking", "experiment"):
        combos.extend([f"{group}={name}"] for name in group_options(group))
    for name in group_options("candidates"):
        combos.append(["quadrant=3", "model=tiny-llama", f"candidates={name}"])
    combos.extend(["experiment=four-quadrants", f"arm={name}"] for name in group_options("arm"))
    return combos


def validate_all(full: bool = False) -> tuple[list[str], int]:
    """Compose every combination (`full`: every method x CRM x model triple, else every pair; see
    `combinations`); also check each YAML names a registered implementation."""
    from llmrec_cli import registry

    errors: list[str] = []
    combos = combinations(full)
    for overrides in combos:
        try:
            compose_run(overrides)
        except LlmrecError as exc:
            errors.append(f"[{' '.join(overrides)}] {exc}")
    try:
        registry.load_all()
    except Exception as exc:  # an import error in a plugin module
        errors.append(f"registry: {type(exc).__name__}: {exc}")
    for group, table, key in (("dataset", registry.DATASETS, "loader"), ("crm", registry.CRMS, "name"),
                              ("method", registry.METHODS, "name")):
        for name in group_options(group):
            value = OmegaConf.load(conf_dir() / group / f"{name}.yaml").get(key)
            if value not in table:
                errors.append(f"conf/{group}/{name}.yaml: {key}={value} is not registered in llmrec_cli.registry")
    for name in group_options("method"):
        declared = str(OmegaConf.load(conf_dir() / "method" / f"{name}.yaml").quadrant)
        entry = registry.METHODS.get(name)
        if entry is not None and entry.info.get("quadrant") != declared:
            errors.append(f"conf/method/{name}.yaml: quadrant={declared} but the code registers "
                          f"quadrant={entry.info.get('quadrant')}")
    return errors, len(combos)
