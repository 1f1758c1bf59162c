"""The sharded safetensors writer: with a plan (the streaming merge's) it writes the same files as without one."""
import json

import pytest
import torch
from safetensors.torch import load_file

from gradfix_hf.storage import ShardedSafetensorsWriter


def tensors():
    generator = torch.Generator().manual_seed(0)
    return {  # sizes that are and are not multiples of 64 bytes, several dtypes, one empty
        "embed.weight": torch.randn(100, 32, generator=generator),
        "layer.0.bias": torch.randn(3, generator=generator),                         # 12 bytes: held, written last
        "layer.0.weight": torch.randn(64, 32, generator=generator).to(torch.bfloat16),
        "layer.0.norm": torch.randn(7, generator=generator).to(torch.float16),
        "ids": torch.arange(16, dtype=torch.int64),
        "empty": torch.zeros(0),
        "head.weight": torch.randn(2, 32, generator=generator),
    }


def write(folder, shard_size, planned):
    folder.mkdir()
    items = tensors()
    plan = [(name, t.dtype, tuple(t.shape)) for name, t in items.items()] if planned else None
    writer = ShardedSafetensorsWriter(folder, shard_size, plan=plan)
    for name, tensor in items.items():
        writer.add(name, tensor)
    return writer.close()


@pytest.mark.parametrize("shard_size", ["5GB", 9000, 3000])
def test_planned_writes_are_byte_identical_to_streamed_ones(tmp_path, shard_size):
    plain = write(tmp_path / "plain", shard_size, planned=False)
    planned = write(tmp_path / "planned", shard_size, planned=True)
    assert plain == planned and (len(plain) > 1) == (shard_size != "5GB")
    for name in plain:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "planned" / name).read_bytes(), name
    loaded = {}
    for name in planned:
        loaded.update(load_file(tmp_path / "planned" / name))
    expected = tensors()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    index = tmp_path / "planned" / "model.safetensors.index.json"
    if len(planned) > 1:
        assert json.loads(index.read_text())["weight_map"].keys() == expected.keys()
    for name in planned:  # every tensor's data starts 64-byte aligned unless its size is not a multiple of 64
        raw = (tmp_path / "planned" / name).read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        assert (8 + header_len) % 64 == 0


def test_planned_writer_refuses_what_the_plan_does_not_say(tmp_path):
    plan = [("a", torch.float32, (4, 4)), ("b", torch.float32, (3,))]
    writer = ShardedSafetensorsWriter(tmp_path, "5GB", plan=plan)
    with pytest.raises(ValueError, match="'c' is not in the writer's plan"):
        writer.add("c", torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"'a': torch.float16 \[4, 4\] but the plan says torch.float32 \[4, 4\]"):
        writer.add("a", torch.zeros(4, 4, dtype=torch.float16))
    writer.add("a", torch.zeros(4, 4))
    with pytest.raises(ValueError, match="'a' was already written"):
        writer.add("a", torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"1 planned tensor\(s\) were never written, e.g. \['b'\]"):
        writer.close()
