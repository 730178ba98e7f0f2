"""Device profiles: every shipped one loads; bad ones are refused with the key's name."""

from __future__ import annotations

import pytest

from vitedge.cli import main
from vitedge.errors import VitedgeError
from vitedge.profiles import BatchRange, available
from vitedge.target import load_profile, profile_from_dict, suggest_profile

SHIPPED = ["cpu", "cpu-openvino", "datacenter-gpu", "desktop-rtx", "desktop-rtx-40", "desktop-rtx-50",
           "jetson-agx-orin", "jetson-orin-nano", "jetson-orin-nx", "jetson-thor",
           "jetson-xavier-nx", "rtx-portable"]


def test_every_shipped_profile_loads_and_cites_its_numbers():
    assert available() == SHIPPED
    for name in SHIPPED:
        p = load_profile(name)
        assert p.notes, f"{name} has no notes with sources"
        assert 1 <= p.batch.min <= p.batch.opt <= p.batch.max


def test_jetson_facts():
    assert load_profile("jetson-orin-nano").tensorrt.dla_core == -1  # no DLA on Orin Nano
    xavier = load_profile("jetson-xavier-nx")
    assert xavier.backend == "onnxruntime"
    assert any("8.5" in n and "Not supported" in n for n in xavier.notes)


@pytest.mark.parametrize("jetson, gpu, expected", [
    ("NVIDIA Jetson Orin Nano Developer Kit", None, "jetson-orin-nano"),
    ("NVIDIA Jetson AGX Orin Developer Kit", None, "jetson-agx-orin"),
    ("NVIDIA Jetson Xavier NX Developer Kit", None, "jetson-xavier-nx"),
    ("NVIDIA Jetson AGX Thor Developer Kit", None, "jetson-thor"),
    (None, "NVIDIA GeForce RTX 4090", "desktop-rtx"),
    (None, "NVIDIA H100 80GB HBM3", "datacenter-gpu"),
    (None, None, "cpu"),
])
def test_suggestion_for_a_machine(jetson, gpu, expected):
    assert suggest_profile(jetson, gpu) == expected


BASE = {"description": "x", "backend": "tensorrt", "precision": "int8"}


@pytest.mark.parametrize("data, message", [
    ({**BASE, "batch": {"min": 4, "opt": 2, "max": 8}}, "impossible batch range 4:2:8"),
    ({**BASE, "batch": {"min": 0, "opt": 1, "max": 1}}, "impossible batch range 0:1:1"),
    ({**BASE, "tensorrt": {"worksapce_mb": 10}}, "unknown key 'worksapce_mb' (did you mean 'workspace_mb'?)"),
    ({**BASE, "precison": "int8"}, "unknown key 'precison'"),
    ({**BASE, "tensorrt": {"workspace_mb": -1}}, "workspace_mb must be positive"),
    ({**BASE, "tensorrt": {"workspace_mb": "big"}}, "tensorrt.workspace_mb must be int"),
    ({**BASE, "tensorrt": {"dla_core": -2}}, "dla_core must be -1"),
    ({**BASE, "tensorrt": {"hardware_compatibility": "turing+"}},
     "tensorrt.hardware_compatibility is turing+; it must be one of none, ampere+"),
    ({"description": "d", "backend": "openvino", "precision": "int8",
      "openvino": {"precision_hint": "bf8"}},
     "openvino.precision_hint is bf8; it must be one of auto, f32, bf16"),
    ({**BASE, "backend": "tflite"}, "backend 'tflite' is not one of"),
    ({**BASE, "targets": ["8.8"]}, "target '8.8' is not one of"),
    ({**BASE, "targets": "8.9"}, "targets must be a list of strings"),
    ({**BASE, "precision": "int4"}, "precision 'int4' is not one of"),
    ({"backend": "tensorrt", "precision": "int8"}, "lacks 'description'"),
])
def test_bad_profiles_are_refused_with_the_key(data, message):
    with pytest.raises(VitedgeError) as info:
        profile_from_dict("bad", data)
    assert message in str(info.value)


def test_profile_file_from_a_path(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "mine"\nbackend = "onnxruntime"\nprecision = "fp16"\n'
                 '[batch]\nmin = 1\nopt = 2\nmax = 4\n')
    p = load_profile(str(f))
    assert (p.name, p.precision, str(p.batch)) == ("mine", "fp16", "1:2:4")
    (tmp_path / "broken.toml").write_text("description = \n")
    with pytest.raises(VitedgeError, match="not valid TOML"):
        load_profile(str(tmp_path / "broken.toml"))


@pytest.mark.parametrize("text, expected", [("1:4:8", (1, 4, 8)), ("2", (2, 2, 2))])
def test_batch_range_parsing(text, expected):
    b = BatchRange.parse(text)
    assert (b.min, b.opt, b.max) == expected


@pytest.mark.parametrize("text", ["8:4:1", "1:2", "a:b:c", "0"])
def test_bad_batch_ranges(text):
    with pytest.raises(VitedgeError):
        BatchRange.parse(text)


def test_unknown_profile_name_suggests_the_nearest(capsys):
    assert main(["profiles", "jetson-orin-nan"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'jetson-orin-nano'" in err and len(err.strip().splitlines()) == 1
