"""Behaviour of the AOT-family model beyond golden equivalence: passes, memory designs, objects, errors, training.

Small random-weight models on tiny frames keep these fast; the numerics are covered by ``test_aot_golden.py``.
"""
from __future__ import annotations

import pytest
import torch

from longvos.models.aot.memory import (GrowingMemory, LayerMemory, ModulatedCrossAttentionMemory, MemoryFusion,
                                       ReferencePlusPreviousMemory, long_term_update_due)
from longvos.models.aot.identity import labels_to_one_hot
from longvos.models.aot.model import network_input_size
from longvos.models.aot.zoo import AOT_MODELS
from longvos.models.registry import create_model, list_models

FRAME_HW = (65, 97)  # (H - 1) % 16 == 0: a 5 x 7 token grid
SMALL = dict(d_model=32, local_window=5)  # narrow E-LSTT, 5 x 5 local window: fast, same code paths


def small_model(name: str = "mavos-mnv2", **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**SMALL, **overrides}).eval()


def frames(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 3, *FRAME_HW, generator=generator)


def box_masks(object_ids: list[int]) -> dict[int, torch.Tensor]:
    """Disjoint vertical stripes, one per object."""
    width = FRAME_HW[1] // (len(object_ids) + 1)
    masks = {}
    for index, object_id in enumerate(object_ids):
        mask = torch.zeros(FRAME_HW)
        mask[8:56, index * width : (index + 1) * width] = 1.0
        masks[object_id] = mask
    return masks


# ---------------------------------------------------------------------------------------------------------------------
# Registry and config
# ---------------------------------------------------------------------------------------------------------------------


def test_registry_lists_every_aot_model():
    names = set(list_models())
    assert {"mavos-mnv2", "mavos-r50", "mavos-swinb", "deaot-mnv2", "deaot-r50", "deaot-swinb", "mavos-lite"} <= names


@pytest.mark.parametrize("name, memory, gap", [("mavos-mnv2", "mca", 10), ("deaot-r50", "growing", 5),
                                              ("mavos-lite", "mca", 5)])
def test_default_memory_design_and_gap(name, memory, gap):
    with torch.device("meta"):
        model = create_model(name)
    assert (model.config.memory, model.config.mem_gap, model.name) == (memory, gap, name)


def test_memory_override():
    with torch.device("meta"):
        model = create_model("deaot-mnv2", memory="ref+prev", mem_gap=3)
    assert (model.long_term_memory.name, model.config.mem_gap) == ("ref+prev", 3)


def test_deaot_with_mca_memory_fails_clearly():
    with pytest.raises(ValueError, match="deaot-mnv2.*MCA weights"):
        create_model("deaot-mnv2", memory="mca")


def test_unknown_model_and_override_errors():
    with pytest.raises(ValueError, match="did you mean mavos-r50"):
        create_model("mavos-r5O")
    with pytest.raises(ValueError, match="unknown AOT config field.*d_modle"):
        create_model("mavos-mnv2", d_modle=64)


def test_mavos_lite_fits_40_mb_in_half_precision():
    with torch.device("meta"):
        model = create_model("mavos-lite")
    numbers = sum(t.numel() for t in model.state_dict().values())
    assert model.config.memory == "mca" and model.config.encoder == "efficientnet_lite0"
    assert numbers * 2 <= 40e6, f"{numbers / 1e6:.1f} M numbers"


@pytest.mark.parametrize("name, size, expected", [
    ("mavos-mnv2", (480, 854), (481, 849)),  # the official 480p example
    ("mavos-mnv2", (129, 225), (129, 225)),
    ("mavos-swinb", (480, 854), (480, 848)),  # Swin: multiples of 16
    ("mavos-mnv2", (5, 5), (17, 17)),  # never below one token
])
def test_input_size_policy(name, size, expected):
    assert network_input_size(AOT_MODELS[name][0], *size) == expected


def test_model_uses_the_input_size_policy():
    with torch.device("meta"):
        model = create_model("deaot-r50")
    assert model.input_size(480, 854) == (481, 849)


# ---------------------------------------------------------------------------------------------------------------------
# Long-term memory designs
# ---------------------------------------------------------------------------------------------------------------------


def _frame_memory(value: float, grid_tokens: int = 6) -> list[LayerMemory]:
    return [LayerMemory(torch.full((1, grid_tokens, 4), value), torch.full((1, grid_tokens, 8), value))]


def test_schedule():
    assert not long_term_update_due(frame_step=4, last_update_step=0, gap=5)
    assert long_term_update_due(frame_step=5, last_update_step=0, gap=5)


def test_growing_prepends_and_ref_plus_prev_replaces():
    grid_hw = (2, 3)
    reference, first, second = _frame_memory(0.0), _frame_memory(1.0), _frame_memory(2.0)
    grown = GrowingMemory().update(GrowingMemory().update(reference, first, grid_hw), second, grid_hw)
    assert grown[0].key_BNC[0, :, 0].tolist() == [2.0] * 6 + [1.0] * 6 + [0.0] * 6

    strategy = ReferencePlusPreviousMemory()
    kept = strategy.update(strategy.update(reference, first, grid_hw), second, grid_hw)
    assert kept[0].key_BNC[0, :, 0].tolist() == [2.0] * 6 + [0.0] * 6
    assert kept[0].value_BNC.shape == (1, 12, 8)


def test_mca_memory_concatenates_first_then_fuses_into_the_dynamic_slot():
    grid_hw = (2, 3)
    torch.manual_seed(0)
    fusion = MemoryFusion(num_layers=1, qk_dim=4, value_dim=4, num_heads=2).eval()
    strategy = ModulatedCrossAttentionMemory(fusion)
    reference, first, second = _frame_memory(0.0), _frame_memory(1.0), _frame_memory(2.0)
    after_first = strategy.update(reference, first, grid_hw)
    assert after_first[0].key_BNC[0, :, 0].tolist() == [1.0] * 6 + [0.0] * 6  # plain concatenation
    after_second = strategy.update(after_first, second, grid_hw)
    layer = after_second[0]
    assert layer.num_tokens == 12
    assert torch.equal(layer.tokens(6).key_BNC, reference[0].key_BNC)  # the reference is never modified
    expected_key = fusion.layers[0].key(second[0].key_BNC, first[0].key_BNC, grid_hw)
    assert torch.allclose(layer.tokens(0, 6).key_BNC, expected_key)
    expected_id_value = fusion.layers[0].id_value(second[0].id_value_BNC, first[0].id_value_BNC, grid_hw)
    assert torch.allclose(layer.tokens(0, 6).id_value_BNC, expected_id_value)


def test_mca_reset_to_identity_segments_exactly_like_ref_plus_prev():
    """With both residual branches zeroed every fusion returns the newest frame's memory, so the `mca` design then
    behaves as `ref+prev` frame for frame: the starting point of an MCA fine-tune (``model.mca_identity_init``)."""
    identity = small_model("mavos-mnv2", mem_gap=2)
    identity.memory_fusion.reset_to_identity()
    plain = small_model("mavos-mnv2", mem_gap=2, memory="ref+prev")
    plain.load_state_dict(identity.state_dict())
    video = frames(8)
    with torch.no_grad():
        states = [model.new_state() for model in (identity, plain)]
        for model, state in zip((identity, plain), states):
            model.step(state, video[0], box_masks([1, 2]))
        for t in range(1, len(video)):  # fusions at frames 4 and 6
            fused, kept = identity.step(states[0], video[t]), plain.step(states[1], video[t])
            assert torch.equal(fused, kept), t
    block = small_model("mavos-mnv2").memory_fusion.layers[0].key  # the random init does change the memory
    tokens_BNC = torch.randn(1, 6, block.dim)
    assert not torch.equal(block(tokens_BNC, tokens_BNC.flip(1), (2, 3)), tokens_BNC)
    block.reset_to_identity()
    assert torch.equal(block(tokens_BNC, tokens_BNC.flip(1), (2, 3)), tokens_BNC)


def _state_nbytes_after(model, checkpoints: tuple[int, ...]) -> list[int]:
    state = model.new_state()
    video = frames(max(checkpoints) + 1)
    sizes = []
    with torch.no_grad():
        model.step(state, video[0], box_masks([1, 2]))
        for t in range(1, len(video)):
            model.step(state, video[t])
            if t in checkpoints:
                sizes.append(state.nbytes())
    return sizes


@pytest.mark.parametrize("name, memory", [("mavos-mnv2", "mca"), ("deaot-mnv2", "ref+prev")])
def test_constant_memory_designs_do_not_grow(name, memory):
    model = small_model(name, memory=memory, mem_gap=5)
    after_30, after_60 = _state_nbytes_after(model, (30, 60))
    assert after_30 == after_60 > 0


def test_growing_memory_grows():
    model = small_model("deaot-mnv2", mem_gap=5)
    after_30, after_60 = _state_nbytes_after(model, (30, 60))
    assert after_60 > after_30


# ---------------------------------------------------------------------------------------------------------------------
# step(): objects, passes, removal
# ---------------------------------------------------------------------------------------------------------------------


def test_frame_without_objects_returns_background_only():
    model = small_model()
    state = model.new_state()
    probs = model.step(state, frames(1)[0])
    assert probs.shape == (1, *FRAME_HW) and torch.equal(probs, torch.ones_like(probs))
    assert state.object_ids == [] and state.nbytes() == 0


def test_reference_frame_returns_the_given_masks_and_probabilities_sum_to_one():
    model = small_model()
    state = model.new_state()
    video = frames(2)
    masks = box_masks([5, 9])
    with torch.no_grad():
        first = model.step(state, video[0], masks)
        second = model.step(state, video[1])
    assert state.object_ids == [5, 9]
    assert torch.equal(first[1], masks[5]) and torch.equal(first[2], masks[9])
    assert second.shape == (3, *FRAME_HW)
    assert torch.allclose(second.sum(0), torch.ones(FRAME_HW), atol=1e-5)


def test_nbytes_counts_the_shared_reference_memory_once():
    model = small_model()
    state = model.new_state()
    with torch.no_grad():
        model.step(state, frames(1)[0], box_masks([1]))
    memory = state.passes[0].memory
    assert memory.long_term[0] is memory.short_term[0]  # right after a reference frame
    one_frame = sum(layer.key_BNC.nbytes + layer.value_BNC.nbytes for layer in memory.long_term)
    assert state.nbytes() == one_frame


def test_twelve_objects_equal_separate_passes_soft_aggregated():
    """12 objects = 2 passes sharing the encoder; equals two separate states (10 + 2 objects) combined by the
    official soft aggregation."""
    model = small_model()
    video = frames(2)
    ids = list(range(101, 113))
    masks = box_masks(ids)
    encoder_calls = []
    model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))

    joint = model.new_state()
    first_pass, second_pass = model.new_state(), model.new_state()
    with torch.no_grad():
        model.step(joint, video[0], masks)
        encoder_calls.clear()
        joint_probs = model.step(joint, video[1])
        assert len(encoder_calls) == 1  # one encoder run serves both passes
        model.step(first_pass, video[0], {i: masks[i] for i in ids[:10]})
        model.step(second_pass, video[0], {i: masks[i] for i in ids[10:]})
        probs_a, probs_b = model.step(first_pass, video[1]), model.step(second_pass, video[1])

    assert len(joint.passes) == 2 and joint.object_ids == ids
    merged = torch.cat([probs_a[:1] * probs_b[:1], probs_a[1:], probs_b[1:]]).clamp(1e-5, 1 - 1e-5)
    expected = torch.softmax(torch.logit(merged), dim=0)
    assert joint_probs.shape == (13, *FRAME_HW)
    assert joint_probs[1:].std(dim=0).mean() > 1e-3  # objects differ, so a channel mix-up would show
    assert torch.allclose(joint_probs, expected, atol=1e-5)


def test_one_object_per_pass_gives_each_object_its_own_pass_and_memory():
    """objects_per_pass=1 (mavos-lite's): three objects make three passes, each object in the first slot; the
    reference frame equals three one-object states combined by soft aggregation. A removed object's pass goes, and
    an object added later opens a pass of its own."""
    model = small_model(objects_per_pass=1)
    video = frames(3)
    ids = [4, 9, 2]
    masks = box_masks(ids)
    joint = model.new_state()
    alone = [model.new_state() for _ in ids]
    with torch.no_grad():
        model.step(joint, video[0], masks)
        joint_probs = model.step(joint, video[1])
        for state, object_id in zip(alone, ids):
            model.step(state, video[0], {object_id: masks[object_id]})
        single = [model.step(state, video[1]) for state in alone]
    assert [pass_.slots[:2] for pass_ in joint.passes] == [[4, None], [9, None], [2, None]]
    background = single[0][:1] * single[1][:1] * single[2][:1]
    merged = torch.cat([background] + [probs[1:] for probs in single]).clamp(1e-5, 1 - 1e-5)
    assert torch.allclose(joint_probs, torch.softmax(torch.logit(merged), dim=0), atol=1e-5)
    with torch.no_grad():
        model.remove_objects(joint, [9])
        model.step(joint, video[2], box_masks([5]))
    assert [pass_.slots[0] for pass_ in joint.passes] == [4, 2, 5] and joint.object_ids == [4, 2, 5]


def test_a_removed_objects_slot_still_counts_toward_objects_per_pass():
    """A retired slot keeps its identity in the pass's memory, so it still fills the pass: with two objects per
    pass, removing one of a full pass's objects does not make room there; the next object opens a new pass."""
    model = small_model(objects_per_pass=2)
    video = frames(3)
    state = model.new_state()
    with torch.no_grad():
        model.step(state, video[0], box_masks([1, 2]))
        model.remove_objects(state, [1])
        probs = model.step(state, video[1], box_masks([3]))
        assert state.locate(2) == (0, 1) and state.locate(3) == (1, 0) and probs.shape == (3, *FRAME_HW)
        probs = model.step(state, video[2])
    assert torch.allclose(probs.sum(dim=0), torch.ones(FRAME_HW), atol=1e-5)


@pytest.mark.parametrize("objects_per_pass", [1, 2])
def test_one_object_per_pass_follows_the_identities_given_whatever_the_weights(objects_per_pass):
    """Exchanging two objects' ids in the reference mask exchanges them in every later frame when each object has
    its own pass, even with random weights (identity cannot be lost); packed into one pass, random weights mix them
    up (this is what the check measures, so it can fail)."""
    model = small_model(objects_per_pass=objects_per_pass)
    video = frames(4)
    masks = box_masks([1, 2])
    runs = []
    for given in (masks, {1: masks[2], 2: masks[1]}):
        state = model.new_state()
        with torch.no_grad():
            model.step(state, video[0], given)
            runs.append([model.step(state, frame).max(dim=0).indices for frame in video[1:]])
    exchange = torch.tensor([0, 2, 1])
    followed = all(torch.equal(exchange[first], second) for first, second in zip(*runs))
    assert followed == (objects_per_pass == 1)


def test_objects_per_pass_is_checked_and_defaults_to_max_objects():
    assert small_model().config.pass_capacity == 10 and AOT_MODELS["mavos-lite"].config.pass_capacity == 1
    # What a run records: None where the model packs as the official engine does, however it was said.
    assert small_model().objects_per_pass is None and small_model(objects_per_pass=10).objects_per_pass is None
    assert small_model("mavos-lite", objects_per_pass=1).objects_per_pass == 1
    for bad in (0, 11):
        with pytest.raises(ValueError, match="objects_per_pass must be from 1 to max_objects"):
            create_model("mavos-mnv2", objects_per_pass=bad)


def test_new_object_mid_video_goes_through_the_long_term_update():
    model = small_model(mem_gap=5)
    state = model.new_state()
    video = frames(4)
    masks = box_masks([1, 2])
    with torch.no_grad():
        model.step(state, video[0], {1: masks[1]})
        model.step(state, video[1])
        assert state.passes[0].memory.long_term_frames == 1
        merged = model.step(state, video[2], {2: masks[2]})
        memory = state.passes[0].memory
        assert state.object_ids == [1, 2]
        assert memory.long_term_frames == 2  # the new reference entered the long-term memory
        assert memory.last_update_step == memory.frame_step == 2
        assert torch.equal(merged[2][masks[2] > 0.5], torch.ones(int(masks[2].sum())))
        probs = model.step(state, video[3])
    assert probs.shape == (3, *FRAME_HW)


def test_reanchoring_replaces_the_prediction_of_that_object():
    model = small_model()
    state = model.new_state()
    video = frames(2)
    masks = box_masks([1, 2])
    new_mask = torch.zeros(FRAME_HW)
    new_mask[:10, :10] = 1.0
    with torch.no_grad():
        model.step(state, video[0], masks)
        merged = model.step(state, video[1], {1: new_mask})
    assert torch.equal(merged[1], new_mask)  # nothing of object 1 survives outside its new mask
    assert state.object_ids == [1, 2]


def test_removed_objects_leave_the_output_and_their_slot_is_not_reused():
    model = small_model()
    state = model.new_state()
    video = frames(4)
    with torch.no_grad():
        model.step(state, video[0], box_masks([1, 2]))
        model.remove_objects(state, [1])
        probs = model.step(state, video[1])
        assert state.object_ids == [2] and probs.shape == (2, *FRAME_HW)
        model.step(state, video[2], box_masks([3]))
        assert state.locate(3) == (0, 2)  # slot 0 (object 1) is retired, slot 1 holds object 2
        model.remove_objects(state, [2, 3])
        assert state.passes == [] and state.nbytes() == 0  # a pass without objects is dropped
        assert model.step(state, video[3]).shape == (1, *FRAME_HW)


def test_error_paths_name_the_problem():
    model = small_model()
    state = model.new_state()
    video = frames(2)
    with pytest.raises(ValueError, match="mask of object 7 has shape"):
        model.step(state, video[0], {7: torch.zeros(10, 10)})
    with pytest.raises(ValueError, match="not a network input size"):
        model.step(state, torch.rand(1, 3, 64, 96))
    with pytest.raises(KeyError, match="object id.*42.*not tracked"):
        model.remove_objects(state, [42])
    with torch.no_grad():
        model.step(state, video[0], box_masks([1]))
    with pytest.raises(ValueError, match="frame size changed"):
        model.step(state, torch.rand(1, 3, 33, 33))


# ---------------------------------------------------------------------------------------------------------------------
# Training-facing verbs
# ---------------------------------------------------------------------------------------------------------------------


def test_verbs_are_differentiable_and_mca_gets_gradients_at_gap_2():
    model = small_model(mem_gap=2).train()
    video = frames(5)[:, 0]
    labels_THW = torch.zeros(5, *FRAME_HW, dtype=torch.long)
    labels_THW[:, 10:40, 20:60] = 1
    one_hot = labels_to_one_hot(labels_THW, model.config.num_classes)

    reference = model.propagate(model.encode_image(video[:1]), id_emb_BNC=model.encode_mask(one_hot[:1]))
    memory = model.start_memory(reference)
    loss = 0.0
    for t in range(1, 5):
        features = model.encode_image(video[t : t + 1])
        propagation = model.propagate(features, memory)
        logits = model.decode(features, propagation.output_BNC)
        loss = loss + logits.square().mean()
        memory = model.write_memory(memory, propagation, one_hot[t : t + 1])
    assert memory.long_term_frames == 2  # updated at t = 2 (concat) and t = 4 (MCA)
    loss = loss + memory.long_term[0].key_BNC.square().mean()  # frame 4's fused memory feeds later frames
    loss.backward()
    mca_grad = sum(p.grad.abs().sum() for p in model.memory_fusion.parameters() if p.grad is not None)
    assert mca_grad > 0
    assert model.identity.bank.weight.grad.abs().sum() > 0


def test_write_memory_gap_defaults_to_the_config_and_can_be_overridden():
    model = small_model(mem_gap=10)
    video = frames(2)[:, 0]
    one_hot = labels_to_one_hot(torch.zeros(1, *FRAME_HW, dtype=torch.long), model.config.num_classes)
    with torch.no_grad():
        reference = model.propagate(model.encode_image(video[:1]), id_emb_BNC=model.encode_mask(one_hot))
        memory = model.start_memory(reference)
        propagation = model.propagate(model.encode_image(video[1:]), memory)
        assert model.write_memory(memory, propagation, one_hot).long_term_frames == 1
        assert model.write_memory(memory, propagation, one_hot, mem_gap=1).long_term_frames == 2
