"""Parametric memory: training, evaluating and packing LoRA adapters (torch + peft).

Framework code only, like ``llm.py``: the trainer worker and the benchmark drive it in-process.

An adapter is trained on the chat turns it will serve: the system turn (the prefix) then a user
question and the assistant's answer. The prefix is run by the base model, once, and its KV cache
is shared by every example; generation does the same (``LanguageModel.generate`` runs a prefix
with the adapter off), so an adapter composes with a KV-cached activation prefix. The loss covers
the answer tokens only, and the adapter sits in the upper layers only, so backward stops there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraModel
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import DynamicCache

from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import memory_pb2
from services.common import validation
from services.common.blobs import BlobStore, check_key
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.prompt import render_prefix, render_rest

from .lessons import Lesson
from .llm import LanguageModel, Sampling

FORMAT = "memos-lora-v1"
GENERAL_TEXT = Path(__file__).resolve().parent / "data" / "general.txt"
SCALES = (0.85, 0.7, 0.55, 0.4)


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: int = 32
    top_layers: int = 0  # the adapter goes into the last this-many decoder layers; 0: every layer
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    learning_rate: float = 2e-3
    epochs: int = 5
    batch_size: int = 16
    # Keeping the rest of the model as it was: each step also pulls the adapter's last hidden
    # states towards the base model's on text the base model wrote itself (relative squared error;
    # equal hidden states mean equal next-token distributions).
    replay_weight: float = 5.0
    replay_per_batch: int = 4
    replay_pool: int = 32
    replay_tokens: int = 48
    # The general-text budget: after training, the adapter's strength is lowered in steps until
    # general-text perplexity is at most this much above the base model's (``fit_scale``).
    max_ppl_increase: float = 0.05
    seed: int = 0


@dataclass
class Evaluation:
    recall: float  # held-out phrasings answered with the fact
    questions: int
    ppl_before: float
    ppl_after: float


log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (step, steps, loss)


def chat_prompt(question: str, memories: Sequence[str] = ()) -> tuple[str, str]:
    """(prefix, rest) of a one-question chat, exactly as the scheduler renders it; ``memories``
    go in as retrieved text."""
    quoted = [memory_pb2.Memory(text=text) for text in memories]
    return render_prefix([]), render_rest(quoted, [scheduler_pb2.ChatMessage(role="user", content=question)])


def _lora_config(config: TrainConfig, layers: int) -> LoraConfig:
    first = max(0, layers - config.top_layers) if config.top_layers else 0
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        layers_to_transform=list(range(first, layers)),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _expand(cache: DynamicCache, batch: int) -> DynamicCache:
    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), i)
    return out


class Adapters:
    """The base model with named LoRA adapters attached; one is active at a time, or none."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.layers = int(lm.model.config.num_hidden_layers)
        self._lora: LoraModel | None = None
        self.current: str | None = None
        self.scales: dict[str, float] = {}
        self.loaded: set[str] = set()
        # Switching adapters changes the shared model: held while one is in use, and by a
        # base-model prefix run (a KV build on another Triton model thread).
        self.lock = threading.RLock()
        lm.base_context = self.base

    @contextlib.contextmanager
    def base(self) -> Iterator[None]:
        """The base model for the duration: an active adapter is off, then on again."""
        with self.lock:
            if self._lora is None or self.current is None:
                yield
                return
            self._lora.disable_adapter_layers()
            try:
                yield
            finally:
                self._lora.enable_adapter_layers()

    def add(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor] | None = None) -> None:
        if name in self.loaded:
            self.remove(name)
        module = _module_name(name)
        if self._lora is None:
            self._lora = LoraModel(self.lm.model, config, module)
        else:
            self._lora.peft_config[module] = config
            self._lora.inject_adapter(self.lm.model, module)
        self.lm.model.eval()
        if state is not None:
            set_peft_model_state_dict(self.lm.model, state, adapter_name=module)
        self.loaded.add(name)
        self.use(None)

    def remove(self, name: str) -> None:
        if self._lora is not None and name in self.loaded:
            self._lora.delete_adapter(_module_name(name))
        self.loaded.discard(name)
        self.scales.pop(name, None)

    def use(self, name: str | None) -> None:
        """Activate ``name``, or no adapter."""
        if name is not None and name not in self.loaded:
            raise KeyError(name)
        self.current = name
        if self._lora is None:
            return
        if name is None:
            self._lora.disable_adapter_layers()
        else:
            self._lora.enable_adapter_layers()
            self._lora.set_adapter(_module_name(name))

    # --- training -----------------------------------------------------------------------------

    def train(
        self,
        name: str,
        lessons: Sequence[Lesson],
        config: TrainConfig = TrainConfig(),
        progress: Progress | None = None,
        checkpoint: Callable[[bytes], None] | None = None,
        resume: bytes | None = None,
    ) -> dict[str, float]:
        """Train adapter ``name`` on the non-held-out ``lessons``; returns loss and timing.

        ``checkpoint`` receives the training state after each epoch; given as ``resume``, such a
        state continues training after its epoch, with the same result as an uninterrupted run
        (a state from other lessons or settings is ignored)."""
        examples = [lesson for lesson in lessons if not lesson.held_out]
        if not examples:
            raise InvalidArgument("no lessons to learn from", reason="NOTHING_TO_LEARN")
        lm = self.lm
        torch.manual_seed(config.seed)
        self.add(name, _lora_config(config, self.layers))
        self.use(None)
        prefix_ids = lm.tokenize(chat_prompt("x")[0])
        prefix_cache = lm.prefill(prefix_ids)  # adapter off: the base model's prefix
        encoded = []
        for lesson in examples:
            rest = lm.tokenize(chat_prompt(lesson.prompt)[1])
            answer = lm.tokenize(lesson.answer + "<|im_end|>")
            encoded.append((rest, answer))
        replay = self._replay_pool(config) if config.replay_weight > 0 else None
        if replay is not None:
            with torch.inference_mode():
                replay_base = self.lm.model.model(input_ids=replay).last_hidden_state.clone()
        self.use(name)
        module = _module_name(name)
        named = {n: p for n, p in lm.model.named_parameters() if "lora_" in n and f".{module}." in n}
        params = list(named.values())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
        steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
        steps = steps_per_epoch * config.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.05, 1 - s / steps)
        )
        rng = random.Random(config.seed)
        started, step, loss_value = time.monotonic(), 0, float("nan")
        fingerprint = hashlib.sha256(json.dumps([asdict(config), encoded]).encode()).hexdigest()
        first_epoch = 0
        if resume is not None:
            state = torch.load(io.BytesIO(resume), map_location="cpu", weights_only=True)
            if state.get("fingerprint") == fingerprint:
                with torch.no_grad():
                    for n, value in state["lora"].items():
                        named[n.replace("{adapter}", module)].copy_(value)
                optimizer.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
                rng.setstate(_python_rng_state(state["rng"]))
                torch.set_rng_state(state["torch_rng"])
                first_epoch, step = int(state["epoch"]), int(state["step"])
            else:
                log.warning("ignoring a checkpoint of other lessons or settings")
        lm.model.train()
        try:
            for epoch in range(first_epoch, config.epochs):
                order = list(range(len(encoded)))
                rng.shuffle(order)
                for at in range(0, len(order), config.batch_size):
                    batch = [encoded[i] for i in order[at : at + config.batch_size]]
                    loss = self._loss(batch, prefix_cache, len(prefix_ids))
                    if replay is not None:
                        rows = lm.tensor(
                            rng.sample(range(len(replay)), min(config.replay_per_batch, len(replay)))
                        )
                        loss = loss + config.replay_weight * self._drift(replay[rows], replay_base[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    loss_value = float(loss.detach())
                    if progress:
                        progress(step, steps, loss_value)
                if checkpoint is not None and epoch + 1 < config.epochs:
                    state = {
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "step": step,
                        "lora": {n.replace(module, "{adapter}"): p.detach().cpu() for n, p in named.items()},
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "rng": _plain(rng.getstate()),
                        "torch_rng": torch.get_rng_state(),
                    }
                    buffer = io.BytesIO()
                    torch.save(state, buffer)
                    checkpoint(buffer.getvalue())
        finally:
            lm.model.eval()
            for p in params:
                p.requires_grad_(False)
            self.use(None)
        return {"loss": loss_value, "steps": steps, "train_seconds": time.monotonic() - started}

    def _replay_pool(self, config: TrainConfig) -> torch.Tensor:
        """Text sampled from the base model (adapter off), opened by a few common words."""
        openers = ["The", "In", "A", "When", "Many", "It", "Most", "After", "People", "This", "On", "Some"]
        tok = self.lm.tokenizer
        starts = [
            tok.encode(openers[i % len(openers)], add_special_tokens=False)[0]
            for i in range(config.replay_pool)
        ]
        generator_seed = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        with self.base(), torch.inference_mode():
            out = self.lm.model.generate(
                input_ids=self.lm.tensor(starts).unsqueeze(1),
                attention_mask=self.lm.tensor([[1]] * len(starts)),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                min_new_tokens=config.replay_tokens - 1,
                max_new_tokens=config.replay_tokens - 1,
                pad_token_id=tok.pad_token_id or 0,
            )
        torch.random.set_rng_state(generator_seed)
        return out.clone()

    def _drift(self, ids: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """How far the adapter moved the last hidden states of ``ids`` from the base model's ``base``."""
        mine = self.lm.model.model(input_ids=ids).last_hidden_state
        return ((mine - base) ** 2).sum(-1).mean() / (base**2).sum(-1).mean()

    def _loss(self, batch, prefix_cache: DynamicCache, prefix_len: int) -> torch.Tensor:
        lm = self.lm
        width = max(len(rest) + len(answer) for rest, answer in batch)
        pad = lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        rows, cols, targets = [], [], []
        for b, (rest, answer) in enumerate(batch):
            seq = rest + answer
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, prefix_len : prefix_len + len(seq)] = 1
            for j, token in enumerate(answer):
                rows.append(b)
                cols.append(len(rest) + j - 1)  # the position that predicts it
                targets.append(token)
        hidden = lm.model.model(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            past_key_values=_expand(prefix_cache, len(batch)),
            use_cache=True,
        ).last_hidden_state
        logits = lm.model.lm_head(hidden[lm.tensor(rows), lm.tensor(cols)])
        return torch.nn.functional.cross_entropy(logits, lm.tensor(targets))

    # --- evaluation ---------------------------------------------------------------------------

    def answer(
        self, question: str, *, adapter: str | None, max_new_tokens: int = 40, memories: Sequence[str] = ()
    ) -> str:
        """Greedy answer to one question with ``adapter`` (or none); ``memories`` as quoted text,
        placed as the scheduler places retrieved memories."""
        prefix, rest = chat_prompt(question, memories)
        self.use(adapter)
        try:
            return "".join(
                self.lm.generate(
                    self.lm.tokenize(prefix),
                    self.lm.tokenize(rest),
                    Sampling(max_new_tokens=max_new_tokens),
                )
            )
        finally:
            self.use(None)

    def perplexity(self, texts: Sequence[str], *, adapter: str | None, window: int = 256) -> float:
        """Token-level perplexity of ``texts`` (each cut to ``window`` tokens)."""
        self.use(adapter)
        total, count = 0.0, 0
        try:
            with torch.inference_mode():
                for text in texts:
                    ids = self.lm.tokenize(text)[:window]
                    if len(ids) < 2:
                        continue
                    out = self.lm.model(input_ids=self.lm.tensor([ids]))
                    loss = torch.nn.functional.cross_entropy(
                        out.logits[0, :-1], self.lm.tensor(ids[1:]), reduction="sum"
                    )
                    total, count = total + float(loss), count + len(ids) - 1
        finally:
            self.use(None)
        return math.exp(total / max(1, count))

    def set_scale(self, name: str, scale: float) -> None:
        """Multiply the adapter's contribution by ``scale`` (1 is as trained)."""
        module = _module_name(name)
        for layer in self.lm.model.modules():
            if isinstance(getattr(layer, "scaling", None), dict) and module in layer.scaling:
                layer.scaling[module] = layer.lora_alpha[module] / layer.r[module] * scale
        self.scales[name] = scale

    def fit_scale(
        self, name: str, texts: Sequence[str], ppl_before: float, budget: float
    ) -> tuple[float, float]:
        """The largest of a few scales at which perplexity of ``texts`` stays within ``budget``
        of ``ppl_before``; the adapter is left at it. Returns (scale, perplexity)."""
        self.set_scale(name, 1.0)
        scale, ppl = 1.0, self.perplexity(texts, adapter=name)
        for lower in SCALES:
            if ppl <= ppl_before * (1 + budget):
                break
            self.set_scale(name, lower)
            scale, ppl = lower, self.perplexity(texts, adapter=name)
        return scale, ppl

    # --- packing ------------------------------------------------------------------------------

    def pack(self, name: str, config: TrainConfig, metadata: dict[str, str]) -> bytes:
        """The adapter as one safetensors blob; its LoRA config, scale and ``metadata`` in the header."""
        state = {
            k: v.cpu().contiguous()
            for k, v in get_peft_model_state_dict(self.lm.model, adapter_name=_module_name(name)).items()
        }
        header = {
            "format": FORMAT,
            "train_config": json.dumps(asdict(config)),
            "scale": repr(self.scales.get(name, 1.0)),
            **metadata,
        }
        return save_tensors(state, metadata=header)

    def load(self, name: str, blob: bytes) -> dict[str, str]:
        """Attach a packed adapter as ``name``; returns its metadata."""
        metadata = read_metadata(blob)
        if metadata.get("format") != FORMAT:
            raise InvalidArgument("not a MemOS LoRA adapter", reason="ADAPTER_FORMAT")
        known = TrainConfig.__dataclass_fields__
        config = TrainConfig(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(metadata["train_config"]).items()
                if k in known
            }
        )
        self.add(name, _lora_config(config, self.layers), load_tensors(blob))
        self.set_scale(name, float(metadata.get("scale", "1.0")))
        return metadata


def general_texts() -> list[str]:
    """Ten paragraphs of everyday English prose (written for this project) for perplexity checks."""
    return [p.strip() for p in GENERAL_TEXT.read_text().split("\n\n") if p.strip()]


def _module_name(name: str) -> str:
    """Adapters are torch modules, whose names allow no dots: a digest of ``name`` stands in."""
    return "a" + hashlib.sha256(name.encode()).hexdigest()[:16]


def read_metadata(blob: bytes) -> dict[str, str]:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})


def recall(adapters: Adapters, lessons: Sequence[Lesson], *, adapter: str | None) -> tuple[int, int]:
    """(right, asked) on the held-out lessons: right when the answer contains what it should."""
    asked = [lesson for lesson in lessons if lesson.held_out and lesson.expect]
    right = sum(contains(adapters.answer(lesson.prompt, adapter=adapter), lesson.expect) for lesson in asked)
    return right, len(asked)


def contains(answer: str, expect: str) -> bool:
    fold = lambda s: " ".join(s.lower().replace("-", " ").split())  # noqa: E731
    return fold(expect) in fold(answer)


def _plain(value):
    """random.getstate() as lists, which torch.load(weights_only=True) reads back."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _python_rng_state(value):
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def checkpoint_key(cube_id: str, adapter_id: str) -> str:
    return f"checkpoints/{cube_id}/{adapter_id}.pt"


def adapter_key(cube_id: str, adapter_id: str) -> str:
    return f"adapters/{cube_id}/{adapter_id}.safetensors"


class ServedAdapters:
    """Adapters attached on demand from the object store, least recently used detached first."""

    def __init__(self, adapters: Adapters, blobs: BlobStore, *, max_loaded: int) -> None:
        self.adapters = adapters
        self._blobs = blobs
        self._max = max_loaded
        self._order: OrderedDict[str, None] = OrderedDict()

    @contextlib.contextmanager
    def applied(self, cube_id: str, ref: str) -> Iterator[None]:
        """``ref`` (an adapter key of ``cube_id``) active for the duration; nothing when ``ref`` is empty."""
        if not ref:
            yield
            return
        validation.cube_id(cube_id, "cube")
        check_key(ref)
        if not ref.startswith(f"adapters/{cube_id}/"):
            raise PermissionDenied("adapter_ref belongs to another cube", reason="ADAPTER_REF_OTHER_CUBE")
        with self.adapters.lock:
            self._attach(ref)
            self.adapters.use(ref)
            try:
                yield
            finally:
                self.adapters.use(None)

    def _attach(self, ref: str) -> None:
        if ref not in self._order:
            try:
                blob = self._blobs.get(ref)
            except NotFound:
                raise NotFound(
                    f"adapter {ref} is not in the object store", reason="ADAPTER_NOT_FOUND"
                ) from None
            self.adapters.load(ref, blob)
            while len(self._order) >= self._max:
                old, _ = self._order.popitem(last=False)
                self.adapters.remove(old)
        self._order[ref] = None
        self._order.move_to_end(ref)
