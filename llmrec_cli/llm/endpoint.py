"""Any LLM behind an OpenAI-compatible endpoint (vLLM, Ollama, `transformers serve`, hosted APIs).

`Endpoint` sends chat requests with the official `openai` client: greedy (temperature 0) with a fixed seed by
default, `model.max_concurrency` requests in flight, and retries with exponential backoff on rate limits (429),
server errors (5xx), timeouts and dropped connections. Every answer goes through `ResponseCache` first: answers
are content-addressed by (base_url, model, messages, sampling parameters) and appended to a JSON-lines file under
`$LLMREC_CACHE_DIR/endpoint/`, one whole line per answer, flushed as it arrives, so a rerun costs nothing and a
killed run resumes where it stopped (a torn last line from a kill is skipped on reading). `stats` counts requests,
cache hits, tokens, latencies and retries for the run's cost figures; the API key is read from the environment
variable named by `model.api_key_env` and never logged.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrec_cli.errors import LlmrecError


class EndpointError(LlmrecError):
    """The endpoint is unreachable, refuses the request, or lacks what a scoring mode needs."""


def request_key(base_url: str, model: str, messages: list[dict], params: dict) -> str:
    payload = json.dumps([base_url.rstrip("/"), model, messages, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Append-only JSON lines `{"key": ..., "answer": {...}}` (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._answers: dict[str, dict] = {}
        self.torn = 0
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        self._answers[record["key"]] = record["answer"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.torn += 1  # a line cut short by a kill: that answer is asked again

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> dict | None:
        return self._answers.get(key)

    def put(self, key: str, answer: dict) -> None:
        line = (json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if key in self._answers:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self._needs_newline():
                    os.write(fd, b"\n")  # the previous writer was killed mid-line
                os.write(fd, line)  # one write of one whole line
                os.fsync(fd)
            finally:
                os.close(fd)
            self._answers[key] = answer

    def _needs_newline(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except OSError:
            return False


@dataclass
class EndpointStats:
    requests: int = 0  # sent to the server (cache misses)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    served_models: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)  # when the answers used by the run were produced (UTC)

    def provenance(self) -> dict[str, str]:
        """Tags: the model names the server put in its answers, any version (`system_fingerprint`) it reported,
        and the span of the answers' dates (a cached answer keeps the date it was produced)."""
        out = {"endpoint.served_model": ",".join(sorted(self.served_models)) or "unknown",
               "endpoint.system_fingerprint": ",".join(sorted(self.fingerprints)) or "none reported"}
        if self.dates:
            out["endpoint.answers_from"], out["endpoint.answers_to"] = min(self.dates), max(self.dates)
        return out

    def metrics(self, price_in: float | None = None, price_out: float | None = None) -> dict[str, float]:
        import numpy as np

        asked = self.requests + self.cache_hits
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        out = {"endpoint/requests": float(self.requests), "endpoint/cache_hits": float(self.cache_hits),
               "endpoint/cache_hit_rate": self.cache_hits / asked if asked else 0.0,
               "endpoint/prompt_tokens": float(self.prompt_tokens),
               "endpoint/completion_tokens": float(self.completion_tokens),
               "endpoint/retries": float(self.retries),
               "endpoint/latency_p50_s": float(np.percentile(lat, 50)),
               "endpoint/latency_p95_s": float(np.percentile(lat, 95))}
        if price_in is not None or price_out is not None:
            out["endpoint/cost_usd"] = (self.prompt_tokens * (price_in or 0.0)
                                        + self.completion_tokens * (price_out or 0.0)) / 1e6
        return out


RETRYABLE_STATUS = (408, 409, 429)


class Endpoint:
    """A chat endpoint with a response cache (see the module docstring). CFG is the `model=endpoint` node."""

    def __init__(self, cfg, cache_root: Path | None = None):
        from llmrec_cli.utils.io import cache_dir

        self.base_url = str(cfg.base_url).rstrip("/")
        self.model = str(cfg.name)
        self.timeout = float(cfg.get("timeout", 60.0))
        self.max_concurrency = max(1, int(cfg.get("max_concurrency", 4)))
        self.max_retries = int(cfg.get("max_retries", 5))
        self.backoff = float(cfg.get("backoff_seconds", 1.0))
        self.params = {"temperature": float(cfg.get("temperature", 0.0)), "seed": int(cfg.get("seed", 0)),
                       "max_tokens": int(cfg.get("max_tokens", 256))}
        key_env = cfg.get("api_key_env")
        self.api_key = os.environ.get(str(key_env)) if key_env else None
        if key_env and not self.api_key:
            raise EndpointError(f"model.api_key_env={key_env}: the environment variable {key_env} is not set; "
                                f"export {key_env}=<your key> (the key never goes into a config or a log)")
        root = cache_root if cache_root is not None else cache_dir() / "endpoint"
        name = hashlib.sha256(f"{self.base_url}|{self.model}".encode()).hexdigest()[:16]
        self.cache = ResponseCache(Path(root) / f"{name}.jsonl")
        self.stats = EndpointStats()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed",
                                  timeout=self.timeout, max_retries=0)  # retries are ours (counted, backed off)
        return self._client

    # ---- checks ------------------------------------------------------------------------------------------
    def check(self) -> dict:
        """One request to `/models`: the server answers and serves `model.name`. Returns what it says."""
        import openai

        try:
            listed = [m.id for m in self.client.with_options(timeout=min(self.timeout, 10.0)).models.list().data]
        except openai.APIConnectionError as exc:
            raise EndpointError(f"model.base_url={self.base_url}: no server answered ({_reason(exc)}); start it "
                                "(vllm serve MODEL, ollama serve, transformers serve) or fix model.base_url") from None
        except openai.AuthenticationError:
            raise EndpointError(f"model.base_url={self.base_url} refused the API key (401): check the variable "
                                "named by model.api_key_env") from None
        except openai.APIStatusError as exc:
            raise EndpointError(f"model.base_url={self.base_url}/models answered {exc.status_code}: is this an "
                                "OpenAI-compatible endpoint (the URL usually ends in /v1)?") from None
        if listed and self.model not in listed:
            shown = ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else "")
            raise EndpointError(f"model.name={self.model} is not served by {self.base_url} (it serves: {shown}); "
                                "set model.name to one of them")
        return {"served": listed}

    # ---- requests ----------------------------------------------------------------------------------------
    def chat(self, conversations: list[list[dict]], **params) -> list[dict]:
        """Answers for CONVERSATIONS (lists of chat messages), in order; cached answers are not asked again."""
        params = {**self.params, **params}
        keys = [request_key(self.base_url, self.model, c, params) for c in conversations]
        answers: list[dict | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        self.stats.cache_hits += len(conversations) - len(todo)
        for a in answers:
            if a is not None:
                self._count(a)
        if todo:
            with ThreadPoolExecutor(self.max_concurrency) as pool:
                for i, answer in zip(todo, pool.map(lambda j: self._ask(conversations[j], params), todo),
                                     strict=True):
                    self.cache.put(keys[i], answer)
                    answers[i] = answer
        return answers  # type: ignore[return-value]

    def _count(self, answer: dict) -> None:
        if answer.get("model"):
            self.stats.served_models.add(str(answer["model"]))
        if answer.get("system_fingerprint"):
            self.stats.fingerprints.add(str(answer["system_fingerprint"]))
        if answer.get("date"):
            self.stats.dates.add(str(answer["date"]))

    def _ask(self, messages: list[dict], params: dict) -> dict:
        import openai

        request = dict(params)
        if "top_logprobs" in request:
            request["logprobs"] = True
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages, **request)
                break
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                err = exc
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRYABLE_STATUS:
                    raise EndpointError(f"{self.base_url} refused a request for model.name={self.model} "
                                        f"({exc.status_code}: {_reason(exc)})") from None
                err = exc
            if attempt == self.max_retries:
                raise EndpointError(f"{self.base_url}: {self.max_retries + 1} attempts failed, the last with "
                                    f"{type(err).__name__} ({_reason(err)}); raise model.timeout / "
                                    "model.max_retries or lower model.max_concurrency") from None
            self.stats.retries += 1
            time.sleep(self.backoff * 2 ** attempt)
        latency = time.perf_counter() - t0
        choice = response.choices[0]
        usage = response.usage
        answer = {"text": choice.message.content or "", "finish_reason": choice.finish_reason,
                  "logprobs": _top_logprobs(choice), "model": response.model,
                  "system_fingerprint": getattr(response, "system_fingerprint", None),
                  "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                  "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
                  "latency_s": latency, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with _STATS_LOCK:
            self.stats.requests += 1
            self.stats.prompt_tokens += answer["prompt_tokens"]
            self.stats.completion_tokens += answer["completion_tokens"]
            self.stats.latencies.append(latency)
            self._count(answer)
        return answer


_STATS_LOCK = threading.Lock()


def _top_logprobs(choice) -> list[dict[str, float]] | None:
    """Per generated token, {token: logprob} of its top alternatives (None when the server returned none)."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    out = []
    for tok in content:
        alts = {t.token: float(t.logprob) for t in (tok.top_logprobs or [])}
        alts.setdefault(tok.token, float(tok.logprob))
        out.append(alts)
    return out


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    return f"{text}: {cause}" if cause is not None and str(cause) not in text else text


# ---- scoring through an endpoint -------------------------------------------------------------------------------


class ApproxTokenizer:
    """Token counts for prompt budgets when the served model's tokenizer is not at hand: ~4 characters a token
    (English text with BPE vocabularies), no special tokens, no chat template (the server applies its own)."""

    chat_template = None
    bos_token = None
    bos_token_id = None

    def __call__(self, texts, add_special_tokens: bool = False):
        def ids(t: str) -> list[int]:
            return list(range((len(t) + 3) // 4))

        return {"input_ids": [ids(t) for t in texts] if isinstance(texts, list | tuple) else ids(texts)}


class EndpointScorer:
    """The in-process `Scorer`'s scoring modes through an `Endpoint`, plus free-text generation.

    `pointwise` / `listwise` read the top log-probabilities of the first answer token (requests with
    `max_tokens=1`, `top_logprobs=20`): the verbalizer is the same as in-process (Yes/No, candidate letters);
    a label missing from the top 20 gets the lowest log-probability seen minus one (it ranks below every listed
    one and ties with other missing labels). A server that returns no log-probabilities is an `EndpointError`
    naming the limitation. `generate` returns the answer texts (the caller parses them).
    """

    TOP_LOGPROBS = 20

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.stats = {"tokens": 0}

    @staticmethod
    def _messages(prompt: str) -> list[dict]:
        return [{"role": "user", "content": prompt}]

    def _first_token_logprobs(self, prompts) -> list[dict[str, float]]:
        answers = self.endpoint.chat([self._messages(p) for p in prompts], max_tokens=1,
                                     top_logprobs=self.TOP_LOGPROBS)
        self._count(answers)
        out = []
        for a in answers:
            if not a.get("logprobs"):
                raise EndpointError(f"{self.endpoint.base_url} returned no logprobs for model.name="
                                    f"{self.endpoint.model}: this server does not support logprobs/top_logprobs "
                                    "(transformers serve and Ollama's OpenAI API do not; vLLM and OpenAI do); use "
                                    "method.scoring=generate")
            first: dict[str, float] = {}
            for token, lp in a["logprobs"][0].items():
                word = token.replace("Ġ", " ").replace("▁", " ").strip()
                if word and (word not in first or lp > first[word]):
                    first[word] = lp
            out.append(first)
        return out

    def _count(self, answers: list[dict]) -> None:
        self.stats["tokens"] += sum(int(a.get("prompt_tokens", 0)) + int(a.get("completion_tokens", 0))
                                    for a in answers)

    @staticmethod
    def _label_scores(first: dict[str, float], labels) -> np.ndarray:
        floor = min(first.values(), default=0.0) - 1.0
        return np.array([first.get(str(lab), floor) for lab in labels], dtype=np.float64)

    def pointwise(self, prompts, yes: str = "Yes", no: str = "No", prefix: str = " ") -> np.ndarray:
        """Log-odds log P(yes) - log P(no) of the first answer token (see the class docstring)."""
        return np.array([float(np.subtract(*self._label_scores(f, (yes, no))))
                         for f in self._first_token_logprobs(prompts)])

    def listwise(self, prompts, num_candidates, labels=None, prefix: str = " ") -> list[np.ndarray]:
        """Log-probabilities of the candidates' labels at the first answer token, renormalised over them."""
        out = []
        for first, c in zip(self._first_token_logprobs(prompts), num_candidates, strict=True):
            scores = self._label_scores(first, (labels or [str(k + 1) for k in range(c)])[:c])
            out.append(scores - np.logaddexp.reduce(scores))
        return out

    def generate(self, prompts, max_tokens: int) -> list[dict]:
        answers = self.endpoint.chat([self._messages(p) for p in prompts], max_tokens=int(max_tokens))
        self._count(answers)
        return answers

    def likelihood(self, *args, **kwargs):
        raise EndpointError("method.scoring=likelihood needs the log-probability of whole candidate texts, which "
                            "chat endpoints do not return; use method.scoring=listwise, pointwise or generate")
