"""LiVOS equivalence with the official code, on every case of ``shared/golden/livos/README.md``.

The official model was run on rule-generated weights (``make_weights.py``); we build the same weights, convert them
with our converter, load them strictly, and compare outputs, argmax and intermediates with the README's tolerances:
- outputs (frames >= 1): max |p - ref| <= 1e-4 and mean |p - ref| <= 1e-5;
- frame 0 (the official core returns aggregated logits there): our probabilities vs their softmax, atol 1e-5;
- argmax: at most 0.05 % of the pixels of a frame may differ (near-ties);
- intermediates and states: max |x - ref| <= 1e-4 * max(1, max |ref|).

Free runs drive the public ``step()`` and read intermediates through forward hooks. Teacher-forced runs write the
label one-hot instead of the prediction, which ``step()`` cannot express (it returns what it memorises), so they
drive the model's verbs (``predict``, ``memorise``), exactly as the README describes the official wrapper.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from conftest import GOLDEN
from longvos.checkpoints import load_checkpoint
from longvos.models.livos import LiVOS
from longvos.models.livos.model import merge_given_masks
from longvos.models.livos.official import livos_drop_reason, livos_key_from_official
from longvos.models.registry import create_model
from longvos.models.livos.layers import unpad

LIVOS_GOLDEN = GOLDEN / "livos"
pytestmark = pytest.mark.slow  # ~30 official-size frames on 2 shared CPU cores


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def official_state_dict() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(LIVOS_GOLDEN))
    try:
        from make_weights import build_state_dict, fingerprint
    finally:
        sys.path.remove(str(LIVOS_GOLDEN))
    state_dict = build_state_dict(str(LIVOS_GOLDEN / "keys_livos_base.json"))
    # The README's fingerprint: if this torch's RNG differs, none of the stored numbers apply.
    assert fingerprint(state_dict) == "388bf9dee53524689e2a2f43df845f05c41d4e78eed06d7f0525f14c103ad18e"
    return state_dict


@pytest.fixture(scope="module")
def loaded(official_state_dict):
    """``livos-r50`` from the registry, loaded through the converter's strict key check: (model, key report)."""
    livos = create_model("livos-r50").eval()
    report = load_checkpoint(livos, official_state_dict)
    return livos, report


@pytest.fixture(scope="module")
def model(loaded) -> LiVOS:
    return loaded[0]


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(LIVOS_GOLDEN / "inputs.npz"))


def _expected(case: str) -> dict[str, np.ndarray]:
    return dict(np.load(LIVOS_GOLDEN / f"expected_{case}.npz"))


@pytest.fixture(autouse=True)
def _official_threads():
    """The fixtures were made with 2 threads and inference mode; match both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.inference_mode():
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- helpers
def frame_tensor(rgb_HW3: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb_HW3).permute(2, 0, 1).float().div(255)[None]


def label_masks(labels_HW: np.ndarray, object_ids: list[int]) -> dict[int, torch.Tensor]:
    return {object_id: torch.from_numpy(labels_HW == object_id).float() for object_id in object_ids}


def assert_close(name: str, ours: torch.Tensor, ref: np.ndarray) -> None:
    ref_t = torch.from_numpy(np.asarray(ref, dtype=np.float32))
    assert tuple(ours.shape) == tuple(ref_t.shape), f"{name}: shape {tuple(ours.shape)} vs {tuple(ref_t.shape)}"
    error = float((ours.float() - ref_t).abs().max())
    limit = 1e-4 * max(1.0, float(ref_t.abs().max()))
    assert error <= limit, f"{name}: max |diff| {error:.3g} > {limit:.3g}"


def assert_output(name: str, prob_KHW: torch.Tensor, ref_KHW: np.ndarray, ref_argmax_HW: np.ndarray, frame: int):
    ref = torch.from_numpy(ref_KHW)
    if frame == 0:  # the official core returns aggregated logits on the first frame
        ref = ref.softmax(dim=0)
    assert prob_KHW.shape == ref.shape, f"{name} frame {frame}: shape {tuple(prob_KHW.shape)} vs {tuple(ref.shape)}"
    diff = (prob_KHW - ref).abs()
    if frame == 0:
        assert float(diff.max()) <= 1e-5, f"{name} frame 0: max |diff| {float(diff.max()):.3g}"
    else:
        assert float(diff.max()) <= 1e-4, f"{name} frame {frame}: max |diff| {float(diff.max()):.3g}"
        assert float(diff.mean()) <= 1e-5, f"{name} frame {frame}: mean |diff| {float(diff.mean()):.3g}"
    flipped = float((prob_KHW.argmax(0) != torch.from_numpy(ref_argmax_HW).long()).float().mean())
    assert flipped <= 5e-4, f"{name} frame {frame}: {flipped:.4%} of argmax pixels differ"


@contextmanager
def recording(model: LiVOS):
    """Record, per frame, the inputs/outputs of the modules the README has intermediates for."""
    frames: list[dict[str, object]] = []

    def hook(name, take):
        def record(module, args, output):
            frames[-1][name] = take(args, output)
        return record

    def new_frame(module, args):  # the image encoder runs first in every step
        frames.append({"image_norm": args[0].clone()})

    hooks = [
        model.image_encoder.register_forward_pre_hook(new_frame),
        model.image_encoder.register_forward_hook(hook("features", lambda a, o: [x.clone() for x in o[:3]])),
        model.key_proj.register_forward_hook(hook("key_raw", lambda a, o: o.clone())),
        model.pixel_proj.register_forward_hook(hook("pixels", lambda a, o: o.clone())),
        model.gate_proj.register_forward_hook(hook("gate", lambda a, o: o.clone())),
        model.pixel_fuser.register_forward_hook(hook("readout", lambda a, o: a[1].clone())),
        model.pixel_fuser.register_forward_hook(hook("fused", lambda a, o: o.clone())),
        model.object_transformer.register_forward_hook(hook("transformer", lambda a, o: o)),
        model.mask_decoder.register_forward_hook(hook("decoder", lambda a, o: o)),
        model.mask_encoder.register_forward_hook(hook("value", lambda a, o: o.value_BNCHW.clone())),
        model.object_summarizer.register_forward_hook(hook("summary", lambda a, o: o.clone())),
    ]
    try:
        yield frames
    finally:
        for handle in hooks:
            handle.remove()


def snapshot(state) -> dict[str, torch.Tensor]:
    return {name: tensor[0].clone() for name, tensor in state.tensors().items()}


def run_free(model: LiVOS, rgb_THW3: np.ndarray, masks_at: dict[int, dict[int, torch.Tensor]]):
    """The public streaming API: ``step()`` on every frame, masks only where the README passes them."""
    state = model.init_state()
    outputs, states = [], []
    with recording(model) as frames:
        for t in range(len(rgb_THW3)):
            outputs.append(model.step(state, frame_tensor(rgb_THW3[t]), masks_at.get(t)))
            states.append(snapshot(state))
    return outputs, states, frames


def run_teacher_forced(model: LiVOS, rgb_THW3: np.ndarray, labels_THW: np.ndarray, first_ids: list[int],
                       new_ids_at: dict[int, list[int]]):
    """Frame 0 and new objects as in the free run, but every later write uses the label one-hot (in channel
    order) instead of the prediction; the outputs stay the model's own (merged with new objects only)."""
    state = model.init_state()
    outputs, states = [], []
    for t in range(len(rgb_THW3)):
        image = frame_tensor(rgb_THW3[t])
        if t == 0:
            outputs.append(model.step(state, image, label_masks(labels_THW[0], first_ids)))
        else:
            frame = model.encode_frame(image)
            prob_BKHW = model.predict(state, frame).prob_BKHW
            if t in new_ids_at:
                prob_BKHW, added = merge_given_masks(prob_BKHW, state.object_ids, label_masks(labels_THW[t], new_ids_at[t]))
                state.append_objects(added)
            one_hot = torch.stack(list(label_masks(labels_THW[t], state.object_ids).values()))[None]
            model.memorise(state, frame, one_hot)
            outputs.append(unpad(prob_BKHW, frame.padding)[0])
        states.append(snapshot(state))
    return outputs, states


# ------------------------------------------------------------------------------------------------------ tests
def test_official_weights_load_strictly_and_bit_exactly(loaded, official_state_dict):
    model, report = loaded
    assert report.ok and report.matched == len(model.state_dict())
    # Only the training-only auxiliary head and the BatchNorm counters are left out, each with its reason.
    assert set(report.dropped) == {k for k in official_state_dict
                                   if k.startswith("aux_computer.") or k.endswith("num_batches_tracked")}
    ours = model.state_dict()
    for official_key, tensor in official_state_dict.items():
        if livos_drop_reason(official_key) is None:
            assert torch.equal(ours[livos_key_from_official(official_key)], tensor), official_key


def test_convert_cli_writes_a_checkpoint_that_loads_back(official_state_dict, model, tmp_path, capsys):
    from longvos.cli.main import main
    from longvos.checkpoints import model_from_checkpoint

    official_path, converted_path = tmp_path / "livos-official.pth", tmp_path / "livos-r50.pt"
    torch.save(official_state_dict, official_path)
    assert main(["convert", str(official_path), str(converted_path), "--model", "livos-r50", "--from", "livos"]) == 0
    assert "60 official tensors dropped" in capsys.readouterr().out
    reloaded = model_from_checkpoint(converted_path)
    assert reloaded.name == "livos-r50"
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


def test_main_free_run(model, inputs):
    exp = _expected("main")
    labels = inputs["main_labels"]
    outputs, states, frames = run_free(model, inputs["main_rgb"], {0: label_masks(labels[0], [1, 2])})

    for t, prob in enumerate(outputs):
        assert_output("main free", prob, exp["free_output"][t], exp["free_argmax"][t], t)
    for t, frame in enumerate(frames):
        assert_close(f"key_phi[{t}]", torch.softmax(frame["key_raw"][0], dim=0), exp["key_phi"][t])
        assert_close(f"gate[{t}]", frame["gate"][0], exp["gate"][t])
        assert_close(f"key_sum_after[{t}]", states[t]["key_sum_BNKhw"][0], exp["key_sum_after"][t])
        assert_close(f"obj_mem_sum_after[{t}]", states[t]["object_memory_BNQC"], exp["free_obj_mem_sum_after"][t])
        if t < 7:  # the official core skips the state write on the (known) last frame; a stream cannot know it
            assert_close(f"state_after[{t}]", states[t]["matching_BNKV"], exp["free_state_after"][t])
        if t > 0:
            z = torch.einsum("khw,khw->", torch.softmax(frame["key_raw"][0], 0), states[t - 1]["key_sum_BNKhw"][0])
            assert_close(f"norm_z[{t}]", z, exp["norm_z"][t])

    first, second = frames[0], frames[1]
    assert_close("f0 image_norm", first["image_norm"][0], _image_norm_reference(inputs["main_rgb"][0]))
    for name, ours in zip(("f4", "f8", "f16"), first["features"]):
        assert_close(f"f0 {name}", ours[0], exp[f"free_f0_{name}"])
    assert_close("f0 key_raw", first["key_raw"][0], exp["free_f0_key_raw"])
    assert_close("f0 pixfeat", first["pixels"][0], exp["free_f0_pixfeat"])
    assert_close("f0 value", first["value"][0], exp["free_f0_value"])
    assert_close("f0 obj_mem", first["summary"][0], exp["free_f0_obj_mem"])
    assert_close("sensory after f0", states[0]["sensory_BNChw"], exp["free_sensory_after_f0"])
    assert_close("f1 readout", second["readout"][0], exp["free_f1_readout"])
    assert_close("f1 pixel_fused", second["fused"][0], exp["free_f1_pixel_fused"])
    assert_close("f1 q_logits", second["transformer"].aux_logits_BNLHW[0], exp["free_f1_q_logits"])
    assert_close("f1 obj_tf_out", second["transformer"].pixels_BNCHW[0], exp["free_f1_obj_tf_out"])
    assert_close("f1 dec_logits4", second["decoder"].logits_BNHW[0], exp["free_f1_dec_logits4"])
    assert_close("f1 sensory after decoder", second["decoder"].sensory_BNCHW[0], exp["free_f1_sensory_after_decoder"])
    assert_close("f1 value", second["value"][0], exp["free_f1_value"])
    assert_close("f1 obj_mem", second["summary"][0], exp["free_f1_obj_mem"])
    assert_close("sensory after f3", states[3]["sensory_BNChw"], exp["free_sensory_after_f3"])


def test_main_teacher_forced_run(model, inputs):
    exp = _expected("main")
    outputs, states = run_teacher_forced(model, inputs["main_rgb"], inputs["main_labels"], [1, 2], {})
    for t, prob in enumerate(outputs):
        assert_output("main tf", prob, exp["tf_output"][t], exp["tf_argmax"][t], t)
        assert_close(f"tf obj_mem_sum_after[{t}]", states[t]["object_memory_BNQC"], exp["tf_obj_mem_sum_after"][t])
        if t < 7:
            assert_close(f"tf state_after[{t}]", states[t]["matching_BNKV"], exp["tf_state_after"][t])
    assert_close("tf sensory after f3", states[3]["sensory_BNChw"], exp["tf_sensory_after_f3"])


def _check_newobj_states(exp, prefix: str, states, write_mask_f3: torch.Tensor) -> None:
    for t in (2, 3, 4):
        assert_close(f"{prefix} state_after_f{t}", states[t]["matching_BNKV"], exp[f"{prefix}_state_after_f{t}"])
    assert_close(f"{prefix} obj_mem_sum_after_f3", states[3]["object_memory_BNQC"], exp[f"{prefix}_obj_mem_sum_after_f3"])
    assert_close(f"{prefix} sensory_after_f3", states[3]["sensory_BNChw"], exp[f"{prefix}_sensory_after_f3"])
    assert_close(f"{prefix} f3_write_mask", write_mask_f3, exp[f"{prefix}_f3_write_mask"])


def _newobj_masks(labels: np.ndarray) -> dict[int, dict[int, torch.Tensor]]:
    # Frame 0 holds ids 1 and 3 (in this channel order); id 2 appears at frame 3.
    return {0: label_masks(labels[0], [1, 3]), 3: label_masks(labels[3], [2])}


def test_new_object_mid_video_free_run(model, inputs):
    exp = _expected("newobj")
    labels = inputs["newobj_labels"]
    outputs, states, frames = run_free(model, inputs["newobj_rgb"], _newobj_masks(labels))

    for t, prob in enumerate(outputs):
        channels = int(exp["num_channels"][t])
        assert_output("newobj free", prob, exp["free_output"][t][:channels], exp["free_argmax"][t], t)
    for t in range(6):
        key_sums = states[t]["key_sum_BNKhw"]
        assert_close(f"key_sum_after[{t}]", key_sums[0], exp["key_sum_after"][t])
        if t >= 3:  # the late object's key sum covers only frames since it appeared
            assert_close(f"late key sum[{t}]", key_sums[2], exp["key_sum_after"][t] - exp["key_sum_after"][2])
        if t >= 4:
            phi = torch.softmax(frames[t]["key_raw"][0], dim=0)
            z_late = torch.einsum("khw,khw->", phi, states[t - 1]["key_sum_BNKhw"][2])
            assert_close(f"norm_z_newgroup[{t}]", z_late, exp["norm_z_newgroup"][t])
    assert states[5]["matching_BNKV"].shape[0] == 3
    assert_close("free f4 readout", frames[4]["readout"][0], exp["free_f4_readout"])
    # The frame-3 write mask is the merged output itself (no padding at 128x224).
    _check_newobj_states(exp, "free", states, outputs[3][1:])


def test_new_object_mid_video_teacher_forced_run(model, inputs):
    exp = _expected("newobj")
    labels = inputs["newobj_labels"]
    outputs, states = run_teacher_forced(model, inputs["newobj_rgb"], labels, [1, 3], {3: [2]})
    for t, prob in enumerate(outputs):
        channels = int(exp["num_channels"][t])
        assert_output("newobj tf", prob, exp["tf_output"][t][:channels], exp["tf_argmax"][t], t)
    one_hot_f3 = torch.stack(list(label_masks(labels[3], [1, 3, 2]).values()))
    _check_newobj_states(exp, "tf", states, one_hot_f3)


def test_padding_to_stride(model, inputs):
    exp = _expected("pad")
    first_masks = label_masks(inputs["pad_label0"], [1, 2])
    outputs, states, frames = run_free(model, inputs["pad_rgb"], {0: first_masks})
    for t, prob in enumerate(outputs):
        assert_output("pad", prob, exp["output"][t], exp["argmax"][t], t)
        assert_close(f"pad key_phi[{t}]", torch.softmax(frames[t]["key_raw"][0], dim=0), exp["key_phi"][t])
        if t < 3:
            assert_close(f"pad state_after[{t}]", states[t]["matching_BNKV"], exp["state_after"][t])
    assert_close("pad f0 image_norm_padded", frames[0]["image_norm"][0], exp["f0_image_norm_padded"])
    assert_close("pad f1 readout", frames[1]["readout"][0], exp["f1_readout"])


def _image_norm_reference(rgb_HW3: np.ndarray) -> np.ndarray:
    """The README's preprocessing, written out independently: [0, 1], then (x - mean) / std (no padding here)."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
    return (rgb_HW3.transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std
