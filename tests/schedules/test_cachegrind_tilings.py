"""A real cache-simulator measurement of a derived tiling (scripts/cachegrind_tilings.py, docs/cachegrind-tilings.md).

One small planar-q4 prefill GEMM (12 rows, K 2048, N 256) is built twice for the same AVX2 target: with the
tiling derived for the simulated caches (Snapdragon 8 Gen 3's facts: 64 KiB 4-way L1d, 512 KiB L2: Kc 512, Tn 64)
and with the one derived for a 4x larger L1d (256 KiB 8-way: Kc = all of K = 2048, and so Tn 32 from the same L2).
Both run in one valgrind process with Snapdragon 8 Gen 3's D1/LL simulated; the tiling derived for these caches
must miss less in D1 (measured when written: 154 K vs 173 K). The numbers are measured, not stored: a schedule
or derivation change that makes the derived tiling worse in its own L1d fails here.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from targets import load_soc
from targets.cpu_facts import CPUFacts, KiB

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (scripts/test.sh installs it)")


def _script():
    spec = importlib.util.spec_from_file_location("cachegrind_tilings", ROOT / "scripts" / "cachegrind_tilings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cachegrind_tilings"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_derived_k_block_misses_less_in_its_l1(tmp_path):
    cg = _script()
    kern = cg.Kernel("gemm", "q4f16p", 2048, 256, 12)  # 2 row tiles of 6, 16 micro-panels of 16 columns
    own = CPUFacts.from_soc(load_soc("snapdragon-8-gen-3"))
    big_l1 = own.replace(l1d_bytes=256 * KiB, l1d_ways=8)
    so_own, t_own, sym_own = cg.build(kern, own, tmp_path, "own")
    so_big, t_big, sym_big = cg.build(kern, big_l1, tmp_path, "bigl1")
    # the same register tile; the K block is the L1-derived knob (the panel width follows from L2 / Kc)
    assert (t_own["mr"], t_own["nr"]) == (t_big["mr"], t_big["nr"])
    assert t_own["kc"] < t_big["kc"] == 2048, (t_own, t_big)
    sim = cg.sim_for("snapdragon-8-gen-3", own, "l2")
    assert sim.d1 == (64 * KiB, 4, 64) and sim.ll == (512 * KiB, 8, 64)
    ctl = cg.build_ctl(tmp_path)
    res = cg.run_callgrind(kern, [(so_own, sym_own, sym_own), (so_big, sym_big, sym_big)], sim, ctl, tmp_path)
    mine, other = cg.derived(res[sym_own]), cg.derived(res[sym_big])
    # the same work (within 5% instructions: the K-block loops and panel fills differ)...
    assert abs(mine["Ir"] - other["Ir"]) < 0.05 * other["Ir"], (mine, other)
    # ...with fewer L1d misses for the K block derived for this L1d
    assert mine["D1"] < other["D1"], (t_own, mine, t_big, other)


def test_decode_attention_tile_misses_less_in_its_l1(tmp_path):
    """scripts/cachegrind_decode_attention.py: the decode attention tile derived for Snapdragon 8 Gen 3's 4-way
    64 KiB L1d (2 pages: a way per page, ways - 2) against the one derived for Apple A17's 8-way 128 KiB L1d
    (4 pages), both under Snapdragon 8 Gen 3's caches: the own tile misses less in D1 (at 2048 keys, docs/cachegrind-decode-attention.md:
    134 K vs 162 K; here 1024 keys), the results checked against numpy inside valgrind."""
    spec = importlib.util.spec_from_file_location("cachegrind_decode_attention", ROOT / "scripts" / "cachegrind_decode_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cg = sys.modules["cachegrind_tilings"]
    own_facts, other_facts = (cg.load_facts(s) for s in ("snapdragon-8-gen-3", "apple-a17-pro"))
    own, other = mod.tiling_for(own_facts), mod.tiling_for(other_facts)
    assert own["tile_pages"] < other["tile_pages"], (own, other)
    ctl = cg.build_ctl(tmp_path)
    calls = [(*mod.build(t, tmp_path, tag), tag) for t, tag in ((own, "own"), (other, "other"))]
    res = mod.run_sim(cg.sim_for("snapdragon-8-gen-3", own_facts, "l2"), calls, ctl, tmp_path, 1024)
    assert res["own"]["D1"] < res["other"]["D1"], res
