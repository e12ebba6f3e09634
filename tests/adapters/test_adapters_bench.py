"""bench.layer_ratio runs on tiny sizes and reports consistent timings."""

import pytest

from ilora.adapters.bench import layer_ratio


def test_layer_ratio_reports_each_mode():
    out = layer_ratio(
        batch=2, tokens=8, in_features=16, out_features=24, repeats=2, warmup=1, modes=("fp32",)
    )
    assert set(out) == {"fp32"}
    r = out["fp32"]
    assert r["moe_s"] > 0 and r["peft_s"] > 0
    assert r["ratio"] == pytest.approx(r["moe_s"] / r["peft_s"])
    with pytest.raises(ValueError, match="unknown mode"):
        layer_ratio(batch=1, tokens=2, in_features=4, out_features=4, repeats=1, warmup=0, modes=("fp8",))
