import pytest
import torch
from pydantic import ValidationError

from services.common.settings import LanguageModelSettings
from services.inference.llm import pick_device


def test_auto_picks_the_gpu_only_when_torch_sees_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_an_error():
    with pytest.raises(RuntimeError, match="sees no GPU"):
        pick_device("cuda:0")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu", ""])
def test_the_device_setting_accepts_only_torch_device_names(value):
    with pytest.raises(ValidationError):
        LanguageModelSettings(llm_device=value)
