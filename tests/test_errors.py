"""sslzoo's errors are also the builtin exceptions a Python user catches around the same calls, and
stay one line with their exit status for the CLI."""

import errno
import pickle

import pytest

import zoo
from zoo import BadArgumentsError, UnknownNameError, UsageError, WeightsError, WeightsNotAvailableError, ZooError


def test_missing_weights_are_a_file_not_found_error():
    with pytest.raises(FileNotFoundError) as caught:
        zoo.create_model("proxynca_resnet50", pretrained=True)  # nobody has trained it: no weights anywhere
    err = caught.value
    assert isinstance(err, WeightsNotAvailableError) and isinstance(err, OSError)
    assert err.errno == errno.ENOENT and err.filename is None and err.strerror == str(err)
    assert str(err).startswith("'proxynca_resnet50' has no published weights yet") and "\n" not in str(err)
    assert "[Errno" not in str(err) and err.exit_code == 1
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        zoo.from_pretrained("no such folder")


def test_bad_keyword_arguments_are_a_type_error_with_or_without_weights():
    for pretrained in (False, True):
        with pytest.raises(TypeError, match="unexpected keyword argument 'depht'") as caught:
            zoo.create_model("rotnet_nin_fmnist", pretrained=pretrained, depht=3)
        assert isinstance(caught.value, BadArgumentsError) and isinstance(caught.value, UsageError)
        assert caught.value.exit_code == 2
    with pytest.raises(TypeError):  # a value of the wrong type
        zoo.create_model("rotnet_nin_fmnist", width="wide")


def test_values_out_of_range_are_a_value_error_not_a_type_error():
    with pytest.raises(ValueError, match="NIN needs at least 3 blocks") as caught:
        zoo.create_model("rotnet_nin_fmnist", num_blocks=1)
    assert type(caught.value) is UsageError and not isinstance(caught.value, TypeError)
    with pytest.raises(ValueError, match="would change the architecture"):  # the weights fix the architecture
        zoo.create_model("rotnet_nin_fmnist", pretrained=True, num_blocks=3)


def test_unknown_names_are_key_errors_with_an_unquoted_message():
    with pytest.raises(KeyError) as caught:
        zoo.get_model_entry("rotnet_alexnt")
    err = caught.value
    assert isinstance(err, UnknownNameError) and isinstance(err, ValueError) and err.exit_code == 2
    assert str(err).startswith("unknown model 'rotnet_alexnt'; did you mean 'rotnet_alexnet'")


def test_broken_weights_are_a_value_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is a file") as caught:
        zoo.from_pretrained(tmp_path / "model.safetensors")
    assert isinstance(caught.value, WeightsError) and caught.value.exit_code == 1


@pytest.mark.parametrize("make", [
    lambda: WeightsNotAvailableError("no  weights\n  here"),
    lambda: WeightsError("bad\nweights"),
    lambda: UsageError("bad\tusage"),
    lambda: BadArgumentsError("bad   arguments"),
])
def test_messages_stay_one_line_and_survive_pickling(make):
    err = make()
    assert "\n" not in str(err) and "  " not in str(err) and isinstance(err, ZooError)
    again = pickle.loads(pickle.dumps(err))  # as DataLoader workers and multiprocessing send them
    assert type(again) is type(err) and str(again) == str(err) and again.exit_code == err.exit_code


def test_cli_reports_missing_weights_as_one_line_not_as_an_os_error(tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "proxynca_resnet50", "--onnx", "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 'proxynca_resnet50' has no published weights yet") and err.count("\n") == 1
    assert "[Errno" not in err and list(tmp_path.iterdir()) == []
    assert main(["info", "rotnet_alexnt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'rotnet_alexnt'") and err.count("\n") == 1
