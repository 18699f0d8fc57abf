"""The CPU fast paths of the AOT family give the same numbers as the straightforward computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longvos.models.aot import local_attention
from longvos.models.aot.identity import IdentityEmbedding, labels_to_one_hot
from longvos.models.aot.model import winning_channel
from longvos.models.layers import attention


@pytest.mark.parametrize("block_bytes, min_rows", [(16 * 2**20, 256), (4096, 7)])  # one block; many uneven blocks
def test_attend_on_cpu_equals_sdpa_with_gradients(monkeypatch, block_bytes, min_rows):
    monkeypatch.setattr(attention, "_CPU_SCORE_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(attention, "_CPU_MIN_QUERY_ROWS", min_rows)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, n, c, generator=generator, requires_grad=True)
              for n, c in ((300, 16), (450, 16), (450, 40))]
    ours = attention.attend(*inputs)
    reference = F.scaled_dot_product_attention(*(t.double() for t in inputs))
    assert (ours.double() - reference).abs().max() < 1e-6
    grads = torch.autograd.grad(ours.sum(), inputs)
    reference_grads = torch.autograd.grad(reference.sum(), inputs)
    assert max((g.double() - r).abs().max().item() for g, r in zip(grads, reference_grads)) < 1e-5


def test_identity_embedding_skips_empty_channels_exactly():
    torch.manual_seed(0)
    embedding = IdentityEmbedding(num_classes=11, d_model=32, align_corners=True).eval()
    labels_BHW = torch.randint(0, 3, (2, 49, 65))  # slots 3..10 empty
    one_hot_BKHW = labels_to_one_hot(labels_BHW, 11)
    expected = embedding.norm(attention.map_to_tokens(embedding.bank(one_hot_BKHW)))
    assert torch.allclose(embedding(one_hot_BKHW), expected, atol=1e-6)


def test_winning_channel_takes_the_first_of_tied_channels():
    probs_KHW = torch.tensor([[[0.2, 0.4]], [[0.4, 0.4]], [[0.4, 0.2]]])
    assert winning_channel(probs_KHW).tolist() == [[1, 0]]


def test_cached_tile_index_built_in_inference_serves_training():
    module = local_attention.LocalGatedPropagation(qk_dim=8, value_dim=16, out_dim=8, max_dis=2)
    maps = [torch.randn(1, c, 9, 11) for c in (8, 8, 16)]
    gate_BNC = torch.randn(1, 99, 16)
    local_attention.tile_index.cache_clear()
    with torch.inference_mode():
        module(*maps, gate_BNC)
    query = maps[0].clone().requires_grad_()
    module(query, *maps[1:], gate_BNC).sum().backward()  # would raise on an inference-mode index tensor
    assert local_attention.tile_index.cache_info().hits >= 1
    assert query.grad is not None and query.grad.abs().sum() > 0
