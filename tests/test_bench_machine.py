import datetime
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import machine  # noqa: E402


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA GPU of the given name (torch.cuda mocked: no GPU needed)."""

    def install(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return install


@pytest.fixture
def two_core_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)


@pytest.mark.parametrize(("name", "tag"), [
    ("NVIDIA H200", "h200"),
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100"),
    ("NVIDIA H200 NVL", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "a100"),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA RTX A6000", "rtx-a6000"),
    ("NVIDIA", "gpu"),
])
def test_machine_tag_of_a_cuda_device_is_the_gpu_model(gpu, name, tag):
    gpu(name)
    for device in ("auto", "cuda", "cuda:0", torch.device("cuda", 0)):
        assert machine.machine_tag(device) == tag
    assert machine.machine_tag() == tag  # "auto" by default


def test_machine_tag_of_the_cpu_counts_its_cores(gpu, monkeypatch):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    gpu("NVIDIA H200")
    assert machine.machine_tag("cpu") == "cpu-2core"  # a GPU that is there but not used
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.machine_tag("auto") == "cpu-2core"
    assert machine.machine_tag() == "cpu-2core"


def test_machine_tag_refuses_a_gpu_that_is_not_there(two_core_cpu):
    with pytest.raises(ValueError, match="no CUDA GPU"):  # dd_medical's InputError
        machine.machine_tag("cuda")


def test_machine_description_names_the_cpu_torch_and_gpu(gpu, two_core_cpu):
    text = machine.machine_description("cpu")
    assert "2 CPU threads" in text and f"torch {torch.__version__}" in text and "GPU" not in text
    gpu("NVIDIA H100 80GB HBM3")
    text = machine.machine_description("auto")
    assert "2 CPU threads" in text and "GPU NVIDIA H100 80GB HBM3 (cuda" in text


def test_json_path_auto_is_named_after_the_bench_and_the_machine(gpu, two_core_cpu):
    assert machine.json_path(None, "quality", "cpu") is None
    expected = ROOT / "benchmarks" / "measured" / "quality_cpu-2core.json"
    assert machine.json_path(Path("auto"), "quality", "cpu") == expected
    assert machine.json_path("auto", "quality") == expected
    assert machine.json_path(Path("out/auto.json"), "quality", "cpu") == Path("out/auto.json")
    assert machine.json_path(Path("/tmp/auto"), "quality", "cpu") == Path("/tmp/auto")
    gpu("NVIDIA H200")
    assert machine.json_path(Path("auto"), "speed", "cuda") == ROOT / "benchmarks" / "measured" / "speed_h200.json"


def test_envelope_of_rows_puts_them_under_rows(two_core_cpu, tmp_path):
    rows = [{"method": "a", "psnr": 30.0}, {"method": "b", "psnr": 31.0}]
    argv = [str(ROOT / "benchmarks" / "bench_denoise.py"), "--json", str(tmp_path / "x.json"), "--only", "a b"]
    data = machine.envelope(rows, "cpu", argv)
    assert list(data) == ["machine", "machine_tag", "command", "date", "rows"]
    assert data["rows"] == rows
    assert data["machine"] == machine.machine_description("cpu") and data["machine_tag"] == "cpu-2core"
    assert data["command"] == f"python benchmarks/bench_denoise.py --json {tmp_path / 'x.json'} --only 'a b'"
    assert data["date"] == datetime.date.today().isoformat()
    assert json.loads(json.dumps(data)) == data


def test_envelope_of_a_dict_keeps_its_keys_at_top_level(two_core_cpu, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "bench_speed.py"), "--quick",
                                      f"--image={ROOT / 'README.md'}"])
    content = {"columns": ["a"], "rows": [{"a": 1}], "machine": "its own line", "torch": "x"}
    data = machine.envelope(content, "auto")
    assert data["command"] == "python benchmarks/bench_speed.py --quick --image=README.md"
    assert data["machine_tag"] == "cpu-2core" and "date" in data
    assert {k: data[k] for k in content} == content  # the benchmark's own keys win, "machine" included
    assert machine.envelope({"rows": []}, "cpu")["machine"] == machine.machine_description("cpu")


def test_write_json_makes_the_folder_and_skips_none(two_core_cpu, tmp_path):
    machine.write_json(None, [{"a": 1}], "cpu")
    path = tmp_path / "sub" / "out.json"
    machine.write_json(path, [{"a": 1}], "cpu", ["bench.py"])
    data = json.loads(path.read_text())
    assert data["rows"] == [{"a": 1}] and data["command"] == "python bench.py" and data["machine_tag"] == "cpu-2core"


def test_bench_reconstruct_writes_its_printed_rows(two_core_cpu, tmp_path, capsys):
    import bench_reconstruct

    out = tmp_path / "reconstruct.json"
    bench_reconstruct.main(["--size", "32", "--only", "inpaint", "--skip-tv", "--iterations", "2", "--ensemble", "1",
                            "--device", "cpu", "--json", str(out)])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 693_UNCR")]
    data = json.loads(out.read_text())
    assert data["machine_tag"] == "cpu-2core" and data["command"].startswith("python benchmarks/bench_reconstruct.py")
    assert len(data["rows"]) == len(printed) >= 2
    for row, line in zip(data["rows"], printed, strict=True):
        assert set(row) == {"image", "setting", "method", "psnr", "ssim", "seconds"}
        assert line.startswith(f"| {row['image']} | {row['setting']} | {row['method']} | {row['psnr']:.2f} |")


def test_bench_denoise_json_auto_goes_to_measured_named_after_the_machine(two_core_cpu, tmp_path, monkeypatch):
    import bench_denoise

    monkeypatch.setattr(machine, "MEASURED", tmp_path)  # not the repository's benchmarks/measured
    bench_denoise.main(["--images", "CT_small.dcm", "--quick", "--device", "cpu", "--only", "none", "--json", "auto"])
    data = json.loads((tmp_path / "denoise_cpu-2core.json").read_text())
    assert data["command"] == ("python benchmarks/bench_denoise.py --images CT_small.dcm --quick --device cpu --only "
                               "none --json auto")
    assert [(r["image"], r["method"]) for r in data["rows"]] == [("CT_small.dcm", "noisy")]


def test_bench_compress_writes_its_rows_in_the_envelope(two_core_cpu, tmp_path, monkeypatch):
    pytest.importorskip("pywt")
    import bench_compress

    rows = [{"image": "x", "k": 8, "dd_psnr": 30.0}]
    monkeypatch.setattr(bench_compress, "load_images", lambda *a, **k: [("x", None, 8)])
    monkeypatch.setattr(bench_compress, "run", lambda *a, **k: rows)
    out = tmp_path / "rd.json"
    bench_compress.main(["--quick", "--device", "cpu", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == rows and data["machine_tag"] == "cpu-2core"
    assert data["command"] == f"python benchmarks/bench_compress.py --quick --device cpu --json {out}"


def test_bench_speed_and_quality_keep_their_keys(two_core_cpu, tmp_path):
    import bench_quality
    import bench_speed

    out = tmp_path / "speed.json"
    bench_speed.main(["--quick", "--device", "cpu", "--skip-rows", "--json", str(out)])
    data = json.loads(out.read_text())
    assert {"columns", "rows", "ratios", "bounds", "iteration_times", "volumes", "machine", "torch", "threads",
            "machine_tag", "command", "date"} <= set(data)
    assert data["machine"] == machine.machine_description("cpu") and data["machine_tag"] == "cpu-2core"

    out = tmp_path / "quality.json"
    bench_quality.main(["--quick", "--device", "cpu", "--only", "ct_small", "--methods", "NLM", "--photons",
                        "--json", str(out)])
    data = json.loads(out.read_text())
    keys = {"machine", "quick", "columns", "bias_bar_hu", "figure", "rows", "machine_tag", "command", "date"}
    assert keys <= set(data)
    assert data["machine_tag"] == "cpu-2core" and data["command"].startswith("python benchmarks/bench_quality.py")
    assert {r["method"] for r in data["rows"]} >= {"noisy", "NLM"}
