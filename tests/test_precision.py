"""The training precision the machine picks, decided for machines we do not have from their CPU flags."""

import json

import torch

from conftest import ROOT
from training.engine import fit
from training.methods import get_recipe, method_module, method_names
from training.precision import cpu_flags, cpu_name, resolve_precision

# /proc/cpuinfo lines of the two CPUs seen on the project's machines (flags shortened, order kept).
ZEN3 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
        "flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu sse2 avx avx2 "
                   "avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
ZEN4 = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx avx2 avx512f avx512_vnni avx512_bf16 vaes\n"


def _flags(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text + "\nprocessor\t: 1\nflags\t\t: only the first cpu counts\n")
    return cpu_flags(path)


def test_auto_is_fp32_on_an_avx2_only_cpu_and_bf16_where_the_cpu_has_it(tmp_path):
    assert resolve_precision("auto", "cpu", _flags(tmp_path, ZEN3))[0] == "fp32"
    precision, why = resolve_precision("auto", "cpu", _flags(tmp_path, SAPPHIRE_RAPIDS))
    assert precision == "bf16" and "amx_bf16 and avx512_bf16" in why
    assert resolve_precision("auto", "cpu", _flags(tmp_path, ZEN4)) == ("bf16", "auto: the CPU has avx512_bf16")
    assert resolve_precision("auto", "cpu", frozenset())[0] == "fp32"  # no /proc/cpuinfo (macOS)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "cpuinfo").write_text(ZEN3)
    assert cpu_name(tmp_path / "cpuinfo") == "AMD EPYC 7763 64-Core Processor"


def test_auto_on_cuda_is_bf16_where_supported_else_fp16_with_a_scaler():
    assert resolve_precision("auto", "cuda", cuda_bf16=True)[0] == "bf16"
    precision, why = resolve_precision("auto", "cuda", cuda_bf16=False)
    assert precision == "fp16" and "scaler" in why
    assert resolve_precision("auto", "mps")[0] == "fp32"


def test_an_explicit_precision_is_kept_and_emulated_bf16_is_flagged(tmp_path):
    zen3 = _flags(tmp_path, ZEN3)
    assert resolve_precision("fp32", "cpu", _flags(tmp_path, SAPPHIRE_RAPIDS)) == ("fp32", "fixed by the recipe or --precision")
    assert resolve_precision("fp16", "cuda", cuda_bf16=True) == ("fp16", "fixed by the recipe or --precision")
    precision, why = resolve_precision("bf16", "cpu", zen3)
    assert precision == "bf16" and "emulated" in why


def _shipped_precisions():
    """(method, recipe, precision it trained in) of every shipped model, from its config.json: the
    precision the run recorded where it did (runs since resolve_precision), else the recipe's, where
    "auto" meant fp32 on every CPU when those weights were trained."""
    for config in sorted((ROOT / "zoo" / "shipped").glob("*/snapshots/*/config.json")):
        training = json.loads(config.read_text())["training"]
        written = training["hyperparameters"]["precision"]
        ran = training.get("precision") or ("fp32" if written == "auto" else written)
        yield training["method"], training["hyperparameters"]["name"], ran


def test_every_small_recipe_runs_fp32_on_avx2_and_as_its_shipped_weights_did_on_native_bf16(tmp_path):
    zen3, sapphire = _flags(tmp_path, ZEN3), _flags(tmp_path, SAPPHIRE_RAPIDS)
    for method in method_names():
        assert resolve_precision(get_recipe(method, "small").precision, "cpu", zen3)[0] == "fp32", method
        assert get_recipe(method, "tiny").precision == "fp32", method  # tests: the same numbers on every CPU
    shipped = list(_shipped_precisions())
    assert len(shipped) >= 20
    for method, recipe, trained_in in shipped:  # retraining a shipped model here runs as it ran
        now = get_recipe(method, recipe).precision
        assert resolve_precision(now, "cpu", sapphire)[0] == trained_in, (method, recipe)


def test_an_explicit_precision_overrides_the_recipe_and_the_run_records_what_ran(tmp_path):
    # what `zoo train simclr --recipe tiny --precision bf16` runs, in this process (no start-up cost)
    recipe = get_recipe("simclr", "tiny").replace(limit=32, batch_size=16, precision="bf16")
    fit(method_module("simclr").METHOD, recipe, tmp_path, progress=False)
    training = json.loads((tmp_path / "model" / "config.json").read_text())["training"]
    assert training["precision"] == "bf16" and training["precision_reason"].startswith("fixed by the recipe")
    assert training["threads"] == torch.get_num_threads() and training["cpu"]
    end = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert (end["event"], end["precision"], end["threads"]) == ("end", "bf16", torch.get_num_threads())


def test_resuming_on_a_machine_that_picks_another_precision_says_so(tmp_path, monkeypatch, capsys):
    import training.engine as engine

    recipe = get_recipe("simclr", "tiny").replace(limit=32, batch_size=16, precision="auto")
    monkeypatch.setattr(engine, "machine_precision", lambda requested, device: ("bf16", "auto: the CPU has amx_bf16"))
    fit(method_module("simclr").METHOD, recipe, tmp_path, progress=False)
    capsys.readouterr()
    monkeypatch.setattr(engine, "machine_precision", lambda requested, device: ("fp32", "auto: no bf16"))
    fit(method_module("simclr").METHOD, recipe.replace(epochs=2), tmp_path, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "the checkpoint's steps ran in bf16, these run in fp32" in err and "--precision bf16" in err
    assert json.loads((tmp_path / "model" / "config.json").read_text())["training"]["precision"] == "fp32"
