"""A distillation resumed from a checkpoint ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from services.common.settings import LanguageModelSettings
from services.inference.lessons import lessons
from services.inference.llm import load_language_model
from services.inference.lora import Adapters, TrainConfig, _module_name

pytestmark = pytest.mark.integration

CONFIG = TrainConfig(
    rank=4, alpha=8, top_layers=2, epochs=3, batch_size=8, replay_weight=1.0, replay_pool=2, replay_tokens=8
)
MEMORIES = [
    ("cubes/c/memories/1", "My cat is called Pepperoni.", "user"),
    ("cubes/c/memories/2", "My sister lives in Tromsø.", "user"),
]


@pytest.fixture(scope="module")
def adapters() -> Adapters:
    return Adapters(load_language_model(LanguageModelSettings()))


def _weights(adapters: Adapters, name: str) -> dict[str, torch.Tensor]:
    tag = _module_name(name)
    return {
        n.replace(tag, "X"): p.detach().clone()
        for n, p in adapters.lm.model.named_parameters()
        if "lora_" in n and tag in n
    }


def test_training_resumed_after_an_epoch_gives_the_same_adapter(adapters):
    taught = lessons(MEMORIES)
    saved: list[bytes] = []
    adapters.train("whole", taught, CONFIG, checkpoint=saved.append)
    assert len(saved) == CONFIG.epochs - 1  # none after the last epoch

    adapters.train("resumed", taught, CONFIG, resume=saved[0])
    whole, resumed = _weights(adapters, "whole"), _weights(adapters, "resumed")
    assert whole and whole.keys() == resumed.keys()
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value)


def test_a_checkpoint_of_other_lessons_is_ignored(adapters):
    saved: list[bytes] = []
    adapters.train("first", lessons(MEMORIES[:1]), CONFIG, checkpoint=saved.append)
    adapters.train("fresh", lessons(MEMORIES), CONFIG)
    adapters.train("other", lessons(MEMORIES), CONFIG, resume=saved[0])
    fresh, other = _weights(adapters, "fresh"), _weights(adapters, "other")
    for key, value in fresh.items():
        torch.testing.assert_close(other[key], value)
