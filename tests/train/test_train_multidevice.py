"""8 simulated CPU devices train the same as 1 (issue 4, done-when 1), and FSDP/TP is a config change."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multidevice")
    out = tmp / "report.json"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "multidevice_worker.py"), str(out), str(tmp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _assert_same(a, b):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    for layer in a["params"]:
        for leaf in a["params"][layer]:
            np.testing.assert_allclose(a["params"][layer][leaf], b["params"][layer][leaf], rtol=1e-5, atol=1e-7)


def test_eight_devices_equal_one(report):
    assert len(report["one"]["losses"]) == len(report["dp8"]["losses"]) == 3
    _assert_same(report["dp8"], report["one"])


def test_batch_is_sharded_over_eight_devices(report):
    # The sharding of the batch arrays the step received: (grad_accum=1, 8 rows) split 8 ways.
    assert report["dp8"]["batch_devices"] == 8
    assert report["dp8"]["batch_shard_shape"] == [1, 1, 6]
    assert report["one"]["batch_devices"] == 1
    b = report["batch_array"]
    assert b == {"num_devices": 8, "shard_shapes": [[1, 1, 6]], "num_shards": 8, "values_match": True}


def test_fsdp_and_tensor_parallel_are_a_config_change(report):
    _assert_same(report["dp2_fsdp2_tp2"], report["one"])
    specs = report["dp2_fsdp2_tp2"]["param_specs"]
    assert specs["dense1"]["kernel"] == ["fsdp", "tensor"]
    assert specs["dense2"]["kernel"] == ["tensor", "fsdp"]
    assert specs["dense1"]["bias"] == [None]
    # Adam's moments live where their parameters live
    assert set(map(tuple, report["dp2_fsdp2_tp2"]["opt_specs"].values())) == {("fsdp", "tensor")}
    assert len(report["dp2_fsdp2_tp2"]["opt_specs"]) == 2  # mu and nu
    assert report["dp8"]["param_specs"]["dense1"]["kernel"] == [None, None]


def test_default_rules_on_llama_params(report):
    assert report["llama_specs"] == {
        "q_proj": [None, "tensor", "fsdp"],
        "o_proj": [None, "fsdp", "tensor"],
        "down_proj": [None, "fsdp", "tensor"],
        "embed_tokens": ["tensor", "fsdp"],
        "norm": [None],
    }


def test_packed_consolidation_on_four_devices_equals_one_unpacked(report):
    # sycomode.loop_packing: 8 rows a step over 4 devices -> each device packs its 2 rows into one
    packed, plain = report["packed"]["dp4_packed"], report["packed"]["one_unpacked"]
    assert packed["plan"] is not None and packed["plan"][0] == 2 and packed["plan"][1] < 2 * 32
    assert plain["plan"] is None
    assert len(packed["losses"]) == len(plain["losses"]) == 3
    np.testing.assert_allclose(packed["losses"], plain["losses"], rtol=1e-5)
    for a, b in zip(packed["lora"], plain["lora"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
