"""Generation on Triton with KV-cache injection: exactness, staleness, cube scoping, bad input."""

import pytest

from services.common.errors import InvalidArgument, PermissionDenied
from services.common.generation import GenerateRequest, Generator
from services.common.settings import GeneratorSettings

PREFIX = (
    "<|im_start|>system\nYou are a helpful assistant. Memories, quoted:\n"
    + "".join(
        f"- [{d} May 2023] Caroline painted a {c} lake.\n" for d, c in ((2, "red"), (4, "blue"), (6, "green"))
    )
    + "- [9 May 2023] Melanie adopted a dog called Oscar.\n"
)
PROMPT = "<|im_end|>\n<|im_start|>user\nWhat is the name of Melanie's dog?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
async def generator(triton_addr):
    g = Generator(GeneratorSettings(inference_addr=triton_addr))
    yield g
    await g.close()


async def test_generation_from_a_kv_reference_equals_generation_from_text(generator, cube):
    built = await generator.build_kv(cube, PREFIX, [f"cubes/{cube}/memories/{'a' * 32}@1"])
    assert built.created and built.prefix_tokens > 50 and f"/{cube}/" in built.kv_ref
    again = await generator.build_kv(cube, PREFIX, [])
    assert again.kv_ref == built.kv_ref and not again.created

    request = GenerateRequest(prompt=PROMPT, prefix=PREFIX, cube_id=cube, max_new_tokens=24)
    text = await generator.generate(request)
    injected = await generator.generate(GenerateRequest(**{**request.__dict__, "kv_ref": built.kv_ref}))

    assert injected.text == text.text and text.completion_tokens > 0
    assert text.kv_status == "none" and text.cached_tokens == 0
    assert injected.kv_status in ("hot", "loaded") and injected.cached_tokens == built.prefix_tokens
    assert injected.prompt_tokens == text.prompt_tokens
    assert "Oscar" in text.text


async def test_a_reference_for_another_prefix_is_not_used(generator, cube):
    built = await generator.build_kv(cube, PREFIX, [])
    changed = PREFIX.replace("Oscar", "Rex")
    result = await generator.generate(
        GenerateRequest(prompt=PROMPT, prefix=changed, cube_id=cube, kv_ref=built.kv_ref, max_new_tokens=12)
    )
    assert result.kv_status == "mismatch" and result.cached_tokens == 0
    plain = await generator.generate(GenerateRequest(prompt=PROMPT, prefix=changed, max_new_tokens=12))
    assert result.text == plain.text


async def test_a_replaced_cache_is_deleted_and_reported_missing(generator, cube, inference):
    old = await generator.build_kv(cube, PREFIX, [])
    new = await generator.build_kv(cube, PREFIX + "- one more memory\n", [], replaces=old.kv_ref)
    assert not (inference.blobs / old.kv_ref).exists() and (inference.blobs / new.kv_ref).exists()
    result = await generator.generate(
        GenerateRequest(prompt=PROMPT, prefix=PREFIX, cube_id=cube, kv_ref=old.kv_ref, max_new_tokens=4)
    )
    assert result.kv_status == "missing" and result.cached_tokens == 0


async def test_one_cubes_cache_is_never_used_for_another(generator, cube):
    built = await generator.build_kv(cube, PREFIX, [])
    other = await generator.build_kv(f"{cube}-other", PREFIX, [])
    assert other.created and other.kv_ref != built.kv_ref  # same prefix, separate cache
    with pytest.raises(PermissionDenied) as err:
        await generator.generate(
            GenerateRequest(prompt=PROMPT, prefix=PREFIX, cube_id=f"{cube}-other", kv_ref=built.kv_ref)
        )
    assert err.value.reason == "KV_REF_OTHER_CUBE"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"max_new_tokens": 0}, "INVALID_MAX_NEW_TOKENS"),
        ({"temperature": -1.0}, "INVALID_TEMPERATURE"),
        ({"top_p": 0.0}, "INVALID_TOP_P"),
        ({"prompt": ""}, "EMPTY_PROMPT"),
        ({"kv_ref": "kv/nope"}, "MALFORMED_KV_REF"),
        ({"max_new_tokens": 4096, "prefix": "word " * 5000}, "CONTEXT_TOO_LONG"),
    ],
)
async def test_bad_generation_requests_get_a_reason(generator, cube, change, reason):
    request = GenerateRequest(**{"prompt": PROMPT, "cube_id": cube, "max_new_tokens": 4, **change})
    with pytest.raises(InvalidArgument) as err:
        await generator.generate(request)
    assert err.value.reason == reason


async def test_sampling_is_reproducible_with_a_seed_and_stop_strings_end_the_text(generator):
    request = GenerateRequest(prompt=PROMPT, prefix=PREFIX, max_new_tokens=16, temperature=0.9, seed=7)
    first, second = await generator.generate(request), await generator.generate(request)
    assert first.text == second.text
    greedy = await generator.generate(GenerateRequest(prompt=PROMPT, prefix=PREFIX, max_new_tokens=24))
    word = greedy.text.split()[1]
    stopped = await generator.generate(
        GenerateRequest(prompt=PROMPT, prefix=PREFIX, max_new_tokens=24, stop=(word,))
    )
    assert (
        word not in stopped.text and greedy.text.startswith(stopped.text) and stopped.finish_reason == "stop"
    )
