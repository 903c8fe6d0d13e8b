"""The paged KV cache's attention-state merge on Vulkan (lavapipe: subgroups of 8).

TVM's GPU ``merge_state_inplace`` lets head_dim/4 threads read S[row, head] and then all write
it back with no barrier, which is right only when those threads share one subgroup.  The
compiler swaps in compiler.model.kv_kernels.merge_state_inplace for GPU targets; these tests
check that kernel against numpy, and a chunked prefill (head_dim 64, so 16 threads per head)
of a whole model against transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.compile import CompileOptions, compile_model
from compiler.frontend.synthetic import write_random_checkpoint
from reference import reference_logits, reference_model
from runtime_stubs.engine import Engine
from vulkan_support import dev, numpy_merge, run_merge, toolchain, vk, vkb, vkrt  # noqa: F401  fixtures

H = 4


@pytest.mark.parametrize("head_dim", [64, 128])
def test_merge_state_kernel_matches_numpy(head_dim, dev, vkb, tmp_path):
    from compiler.model.kv_kernels import merge_state_inplace

    (v, s, vo, so), out = run_merge(merge_state_inplace, H, head_dim, vkb, dev, tmp_path / "merge.so", rows=5,
                                    seed=head_dim)  # fmt: skip
    ref_v, ref_s = numpy_merge(v, s, vo, so)
    np.testing.assert_allclose(out[0], ref_v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[2], vo)  # the other state is only read
    np.testing.assert_array_equal(out[3], so)


CONFIG = dict(
    hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=256,
    num_hidden_layers=2, vocab_size=512, rope_theta=500000.0, max_position_embeddings=256,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)  # fmt: skip


def test_chunked_prefill_head_dim_64_matches_transformers(dev, vkb, tmp_path):
    """A 40-token prompt with prefill_chunk 16: chunks 2 and 3 merge with the cached prefix."""
    src = write_random_checkpoint(tmp_path / "ckpt", CONFIG, seed=7)
    out = compile_model(src, tmp_path / "pkg", CompileOptions(target="vulkan", quant="q0f32", prefill_chunk=16, context_window=128))
    prompt = [1] + [(37 * i + 5) % 500 + 3 for i in range(39)]
    gen = Engine(out).generate(prompt, max_tokens=6, keep_logits=True, stop_on_eos=False)
    logits = np.stack(gen.logits)
    ref = reference_logits(reference_model(src), prompt + gen.token_ids[:-1])[len(prompt) - 1 :]
    assert logits.shape == ref.shape
    rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
    assert rel <= 1e-3, f"max |logits - transformers| / max |logits| = {rel:.3g}"
    assert gen.token_ids == [int(t) for t in ref.argmax(-1)]
