import hashlib
import json
import re

import pytest
import torch

import probes.recording as recording
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, encode, render
from probes.passes import HookDidNotFire, read_activations
from probes.recording import record_activations
from probes.store import ActivationStore

QUERIES = [f"Question number {i}: " + "tell me about rivers " * (i % 5 + 1) for i in range(11)]


def _prompts(tokenizer, condition=Condition("math", "short", "system")):
    return [render(tokenizer, q, condition, item_id=f"q{i}") for i, q in enumerate(QUERIES)]


def _digest(directory):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


# two block outputs: the pass ends in the deepest one's hook; one block output before the last block: the bridge's
# stop_at_layer, no hook at all
@pytest.mark.parametrize("hooks", [["blocks.0.hook_out", "blocks.2.hook_out"], ["blocks.1.hook_out"]])
def test_recorded_positions_match_a_direct_forward(tiny, tmp_path, hooks):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)
    stores = {
        positions: record_activations(
            bridge,
            tokenizer,
            prompts,
            tmp_path / positions,
            hooks=hooks,
            positions=positions,
            batch_size=4,
            shard_size=5,
            progress=False,
        )
        for positions in ("last", "mean", "all")
    }
    offsets = stores["all"].offsets()
    for index, prompt in enumerate(prompts):
        tokens = torch.tensor([encode(tokenizer, prompt)])
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in hooks)
        for hook in hooks:
            full = cache[hook][0]
            torch.testing.assert_close(stores["last"].load(hook)[index], full[-1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(stores["mean"].load(hook)[index], full.mean(0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                stores["all"].load(hook)[offsets[index] : offsets[index + 1]], full, atol=1e-5, rtol=1e-5
            )
    manifest = stores["last"].manifest
    assert manifest["hooks"] == hooks and manifest["positions"] == "last"
    assert [p["sha256"] for p in manifest["prompts"]] == [p.sha256 for p in prompts]
    assert [p["text"] for p in manifest["prompts"]] == [p.text for p in prompts]  # the prompt itself, beside its hash
    assert manifest["prompts"][0]["condition"]["persona"] == "math" and manifest["prompts"][3]["item_id"] == "q3"
    assert [s["file"] for s in manifest["shards"]] == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
        "shard_00002.safetensors",
    ]


@pytest.mark.parametrize(
    "hooks",
    [
        ["blocks.1.hook_out"],
        ["blocks.2.hook_out"],
        ["blocks.0.hook_out", "blocks.1.hook_out"],
        ["blocks.0.attn.hook_out"],
    ],
)
def test_activations_read_in_memory_equal_the_recorded_ones_and_write_nothing(tiny, tmp_path, monkeypatch, hooks):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)
    stores = {
        positions: record_activations(
            bridge,
            tokenizer,
            prompts,
            tmp_path / positions,
            hooks=hooks,
            positions=positions,
            batch_size=4,
            progress=False,
        )
        for positions in ("last", "mean", "all")
    }

    def no_files(*args, **kwargs):
        raise AssertionError("reading activations in memory wrote a file")

    monkeypatch.setattr(recording, "save_file", no_files)
    monkeypatch.setattr(recording, "write_json", no_files)
    for positions, store in stores.items():
        read = read_activations(bridge, tokenizer, prompts, hooks=hooks, positions=positions, batch_size=4)
        for hook in hooks:
            assert torch.equal(read.load(hook), store.load(hook))
        if positions == "all":
            assert torch.equal(read.offsets(), store.offsets())
        else:
            with pytest.raises(ToolkitError, match="offsets exist only for positions='all'"):
                read.offsets()
    with pytest.raises(ToolkitError, match="was not read"):
        read.load("blocks.9.hook_out")


def test_a_single_block_output_is_read_by_a_pass_that_stops_after_its_block(tiny):
    bridge, tokenizer = tiny
    finished = []
    handles = [
        block.register_forward_hook(lambda module, args, output, index=index: finished.append(index))
        for index, block in enumerate(bridge.blocks)
    ]
    try:
        read_activations(bridge, tokenizer, _prompts(tokenizer)[:3], hooks=["blocks.0.hook_out"], batch_size=2)
        assert finished == [0, 0]  # two batches; blocks 1 and 2 never finish
        finished.clear()
        read_activations(bridge, tokenizer, _prompts(tokenizer)[:3], hooks=["blocks.1.hook_out"], batch_size=3)
        assert finished == [0, 1]
    finally:
        for handle in handles:
            handle.remove()


def test_default_hooks_are_every_residual_output(tiny, tmp_path):
    bridge, tokenizer = tiny
    store = record_activations(bridge, tokenizer, _prompts(tokenizer)[:2], tmp_path / "s", progress=False)
    assert store.hooks == [f"blocks.{i}.hook_out" for i in range(bridge.cfg.n_layers)]
    assert store.load("blocks.1.hook_out").shape == (2, bridge.cfg.d_model)


def test_interrupted_recording_resumes_to_an_identical_store(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)
    kwargs = dict(
        hooks=["blocks.1.hook_out", "blocks.0.hook_out"], positions="mean", batch_size=3, shard_size=4, progress=False
    )
    record_activations(bridge, tokenizer, prompts, tmp_path / "whole", **kwargs)

    calls = {"n": 0}

    def crash_on_fourth_batch(activation, hook):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_activations(
            bridge,
            tokenizer,
            prompts,
            tmp_path / "resumed",
            extra_hooks=[("blocks.0.hook_out", crash_on_fourth_batch)],
            **kwargs,
        )
    partial = ActivationStore(tmp_path / "resumed")
    assert not partial.complete and len(partial.manifest["shards"]) == 1
    with pytest.raises(ToolkitError, match="unfinished"):
        partial.load("blocks.0.hook_out")
    assert not list((tmp_path / "resumed").glob("*.partial"))
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    for prompt in manifest["prompts"]:  # as stores written before prompts kept their text: resumed by their hashes
        del prompt["text"]
    (tmp_path / "resumed" / "manifest.json").write_text(json.dumps(manifest))

    resumed = record_activations(bridge, tokenizer, prompts, tmp_path / "resumed", **kwargs)
    assert resumed.complete
    assert _digest(tmp_path / "resumed") == _digest(tmp_path / "whole")


def test_a_store_with_other_settings_is_never_overwritten_silently(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)[:3]
    record_activations(bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.0.hook_out"], progress=False)
    before = _digest(tmp_path / "s")
    with pytest.raises(ToolkitError, match="different hooks"):
        record_activations(bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.1.hook_out"], progress=False)
    assert _digest(tmp_path / "s") == before
    replaced = record_activations(
        bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.1.hook_out"], overwrite=True, progress=False
    )
    assert replaced.hooks == ["blocks.1.hook_out"]


def test_aliased_hook_names_are_recorded_under_the_requested_name(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)[:2]
    alias = record_activations(
        bridge, tokenizer, prompts, tmp_path / "a", hooks=["blocks.1.hook_resid_post"], progress=False
    )
    canonical = record_activations(
        bridge, tokenizer, prompts, tmp_path / "c", hooks=["blocks.1.hook_out"], progress=False
    )
    assert torch.equal(alias.load("blocks.1.hook_resid_post"), canonical.load("blocks.1.hook_out"))


def test_a_hook_that_never_fires_is_an_error(tiny, tmp_path):
    bridge, tokenizer = tiny
    with pytest.raises(HookDidNotFire, match="blocks.0.attn.hook_hidden_states"):
        record_activations(
            bridge,
            tokenizer,
            _prompts(tokenizer)[:2],
            tmp_path / "s",
            hooks=["blocks.0.attn.hook_hidden_states"],
            progress=False,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hooks=["blocks.7.hook_out"]), re.escape("the model has 3 blocks (0..2)")),
        (dict(hooks=["blocks.0.hook_nonsense"]), "unknown hook point"),
        (dict(hooks=["blocks.0.hook_mlp_in"]), "use_hook_mlp_in"),
        (dict(hooks=[]), "no hooks requested"),
        (dict(positions="first"), "unknown positions"),
        (dict(batch_size=0), "batch size"),
        # refused only once the first batch shows its shape: what was written for it is removed again
        (
            dict(hooks=["blocks.0.attn.hook_pattern"]),
            re.escape("blocks.0.attn.hook_pattern gives activations of shape (2, 4,"),
        ),
        (
            dict(hooks=["blocks.0.hook_out", "blocks.1.attn.hook_attn_scores"], positions="all"),
            "hook_attn_scores gives",
        ),
    ],
)
def test_bad_recording_requests_leave_nothing_behind(tiny, tmp_path, kwargs, message):
    bridge, tokenizer = tiny
    with pytest.raises(ToolkitError, match=message) as caught:
        record_activations(bridge, tokenizer, _prompts(tokenizer)[:2], tmp_path / "s", progress=False, **kwargs)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "s").exists()
    (tmp_path / "mine").mkdir()  # a folder of the user's own, empty: kept
    with pytest.raises(ToolkitError, match=message):
        record_activations(bridge, tokenizer, _prompts(tokenizer)[:2], tmp_path / "mine", progress=False, **kwargs)
    assert list((tmp_path / "mine").iterdir()) == []


def test_text_longer_than_the_context_is_refused_before_writing(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompt = render(tokenizer, "river " * 700, Condition())
    with pytest.raises(ToolkitError, match="context is 512"):
        record_activations(bridge, tokenizer, [prompt], tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_a_directory_that_is_not_a_store_is_left_alone(tiny, tmp_path):
    bridge, tokenizer = tiny
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ToolkitError, match="not an activation store"):
            record_activations(
                bridge, tokenizer, _prompts(tokenizer)[:1], tmp_path / "s", overwrite=overwrite, progress=False
            )
        assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_nothing_but_a_store_the_toolkit_wrote(tiny, tmp_path):
    """--overwrite on a folder whose manifest.json is anyone's own file: refused, every file intact."""
    bridge, tokenizer = tiny
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"shipping": "crates"}')
    (folder / "thesis.tex").write_text("chapter 1")
    before = _digest(folder)
    with pytest.raises(ToolkitError, match="not written by `prism record`") as caught:
        record_activations(bridge, tokenizer, _prompts(tokenizer)[:1], folder, overwrite=True, progress=False)
    assert "\n" not in str(caught.value) and _digest(folder) == before


def test_overwrite_replaces_the_store_and_keeps_other_files_beside_it(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)[:3]
    record_activations(
        bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.0.hook_out"], shard_size=1, progress=False
    )
    (tmp_path / "s" / "notes.txt").write_text("mine")
    replaced = record_activations(
        bridge, tokenizer, prompts[:1], tmp_path / "s", hooks=["blocks.1.hook_out"], overwrite=True, progress=False
    )
    assert replaced.hooks == ["blocks.1.hook_out"] and (tmp_path / "s" / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in (tmp_path / "s").glob("shard_*")) == ["shard_00000.safetensors"]


def test_a_damaged_shard_is_recorded_again_on_resume_and_reading_one_fails_in_one_line(tiny, tmp_path):
    bridge, tokenizer = tiny
    prompts = _prompts(tokenizer)[:3]
    store = record_activations(
        bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.0.hook_out"], shard_size=1, progress=False
    )
    whole = store.load("blocks.0.hook_out")
    damaged = tmp_path / "s" / "shard_00001.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    with pytest.raises(ToolkitError, match="shard_00001.safetensors is damaged") as caught:
        store.load("blocks.0.hook_out")
    assert "\n" not in str(caught.value)
    resumed = record_activations(
        bridge, tokenizer, prompts, tmp_path / "s", hooks=["blocks.0.hook_out"], shard_size=1, progress=False
    )
    assert torch.equal(resumed.load("blocks.0.hook_out"), whole)
