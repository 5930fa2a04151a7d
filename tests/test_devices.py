"""`--device`: one rule (stages.shared.devices) for auto, cpu, cuda, cuda:N and mps, checked without a GPU by
letting torch report the CUDA devices a machine would have."""

import re

import pytest
import torch
from typer.testing import CliRunner

from expclip.base.errors import ExpclipError
from expclip.base.settings import value_problem
from expclip.cli import app
from expclip.stages.extract.config import ExtractConfig
from expclip.stages.shared.devices import resolve_device
from expclip.stages.shared.vocabulary import DEVICE

runner = CliRunner()
FORMS = "auto, cpu, cuda, cuda:N, mps"


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA devices (0: none)."""
    def have(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return have


def test_cuda_n_names_a_device_that_exists(gpus):
    gpus(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("n, name, message", [
    (2, "cuda:2", "--device cuda:2: this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
    (1, "cuda:1", "--device cuda:1: this machine has 1 CUDA device (cuda:0)"),
    (0, "cuda:0", "--device cuda:0: no CUDA device is available here"),
    (0, "cuda", "--device cuda: no CUDA device is available here"),
    (1, "gpu", f"--device 'gpu': choose one of {FORMS} (N: a CUDA device index)"),
    (1, "cuda:-1", f"--device 'cuda:-1': choose one of {FORMS} (N: a CUDA device index)"),
    (1, "CUDA:0", f"--device 'CUDA:0': choose one of {FORMS} (N: a CUDA device index)"),
    (1, "cuda:01", f"--device 'cuda:01': choose one of {FORMS} (N: a CUDA device index)"),  # torch refuses it
    (1, "cuda:\u0661", f"--device 'cuda:\u0661': choose one of {FORMS} (N: a CUDA device index)"),  # Arabic one
])
def test_absent_or_misspelt_devices_are_refused_in_one_line(gpus, n, name, message):
    gpus(n)
    with pytest.raises(ExpclipError) as e:
        resolve_device(name)
    assert str(e.value) == message


@pytest.mark.parametrize("name", ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:7", "cuda:10", "cuda:01", "cuda:",
                                  "cuda:1 ", " cpu", "cuda:\u0663", "cuda:-1", "cuda0", "CPU", "gpu", ""])
def test_the_option_check_and_the_resolver_accept_the_same_forms(gpus, monkeypatch, name):
    """One pattern for cuda:N: a form the option's check passes is one the resolver (and torch) takes, and a form it
    refuses the resolver refuses too, on a machine where every form's device would exist."""
    gpus(11)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    field = ExtractConfig.__dataclass_fields__["device"]
    assert field.metadata["pattern"] is DEVICE
    if value_problem(field, name) is None:
        assert resolve_device(name) == torch.device("cuda" if name == "auto" else name)
    else:
        with pytest.raises(ExpclipError, match=r"choose one of"):
            resolve_device(name)


def test_auto_without_cuda_is_the_cpu(gpus):
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")


def test_mps_only_where_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ExpclipError, match=r"^--device mps: this torch sees no MPS \(Apple GPU\) device here$"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert ExtractConfig().batch_for("mps") == ExtractConfig().batch_for("cuda") == 256  # a GPU's batch


@pytest.mark.parametrize("command", ["extract", "fit-head", "evaluate", "ablate", "run", "predict", "search", "audit"])
def test_every_device_option_offers_every_form(command):
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", runner.invoke(app, [command, "--help"],
                                                                 env={"COLUMNS": "250"}).output).split())
    assert "--device <auto|cpu|cuda|cuda:N|mps>" in help_text
    assert "cpu, cuda, cuda:N (CUDA device N) or mps" in help_text


def test_the_cli_refuses_an_absent_cuda_n_in_one_line(gpus, tmp_path, tiny_clip):
    gpus(1)
    photo = tmp_path / "face.png"
    from PIL import Image

    Image.new("RGB", (40, 40), "gray").save(photo)
    result = runner.invoke(app, ["predict", str(photo), "--clip-model", tiny_clip, "--device", "cuda:1"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --device cuda:1: this machine has 1 CUDA device (cuda:0)"
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.new("RGB", (40, 40), "gray").save(faces / "a.png")
    result = runner.invoke(app, ["extract", str(faces), "--out", str(tmp_path / "c.h5"), "--clip-model", tiny_clip,
                                 "--no-teacher", "--device", "gpu"])
    plain = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--device': 'gpu' is not one of auto, cpu, cuda, cuda:N, mps" in plain  # as parsed
    assert not (tmp_path / "c.h5").exists()
