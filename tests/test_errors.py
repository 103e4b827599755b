"""loomx.errors: each error is a ``LoomxError`` and the builtin exception its docstring
names, keeps the file and HDF5 path as attributes and in its message, and survives
``pickle`` with them (errors cross dask worker boundaries)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest

import loomx
from loomx import errors

BUILTINS = {
    errors.LoomFormatError: (ValueError,),
    errors.LoomInvalidNameError: (ValueError, errors.LoomFormatError),
    errors.LoomTypeError: (TypeError,),
    errors.LoomFileError: (OSError,),
    errors.LoomFileNotFoundError: (FileNotFoundError, OSError, errors.LoomFileError),
    errors.LoomNameError: (KeyError,),
    errors.LoomWriteError: (OSError,),
}
"""Each error class and the exceptions its docstring says it is."""


def test_every_error_class_is_listed():
    public = {
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), errors.LoomxError)
    }
    assert public == {errors.LoomxError, *BUILTINS}


@pytest.mark.parametrize("cls", sorted(BUILTINS, key=lambda c: c.__name__))
def test_each_error_is_a_loomx_error_and_its_builtin(cls):
    err = cls("found x, expected y", path="a.loom", h5path="/matrix")
    assert isinstance(err, errors.LoomxError)
    for builtin in BUILTINS[cls]:
        assert isinstance(err, builtin), builtin
    with pytest.raises(BUILTINS[cls][0]):  # code written against builtins still catches it
        raise err


@pytest.mark.parametrize("cls", [errors.LoomxError, *sorted(BUILTINS, key=lambda c: c.__name__)])
def test_message_names_file_and_hdf5_path(cls):
    err = cls("found 3 rows, expected 4", path=Path("dir/a.loom"), h5path="/row_attrs/Gene")
    assert err.path == "dir/a.loom"  # a str, whatever path-like was given
    assert err.h5path == "/row_attrs/Gene"
    assert err.message == "found 3 rows, expected 4"
    assert str(err) == "'dir/a.loom', /row_attrs/Gene: found 3 rows, expected 4"


def test_message_without_hdf5_path_or_file():
    assert str(errors.LoomFileError("not HDF5", path="a.loom")) == "'a.loom': not HDF5"
    assert str(errors.LoomFileError(path="a.loom")) == "'a.loom'"
    bare = errors.LoomFormatError("no file here")
    assert (bare.path, bare.h5path, str(bare)) == (None, None, "no file here")


def test_name_error_reads_like_its_message():
    """KeyError's str() would quote the message; LoomNameError's does not."""
    err = errors.LoomNameError("no layer 'x'", path="a.loom", h5path="/layers/x")
    assert str(err) == "'a.loom', /layers/x: no layer 'x'"
    assert str(KeyError("no layer")) == "'no layer'"  # what it avoids


@pytest.mark.parametrize("cls", [errors.LoomxError, *sorted(BUILTINS, key=lambda c: c.__name__)])
def test_errors_survive_pickle(cls):
    err = cls("found a, expected b", path="a.loom", h5path="/col_graphs/KNN")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.path, back.h5path, back.message) == (err.path, err.h5path, err.message)
    assert str(back) == str(err)
    assert back.args == err.args


def test_pickled_error_without_path():
    back = pickle.loads(pickle.dumps(errors.LoomTypeError("strings and numbers")))
    assert (back.path, back.h5path, str(back)) == (None, None, "strings and numbers")


def test_format_warning_is_a_user_warning():
    assert issubclass(errors.LoomFormatWarning, UserWarning)
    with pytest.warns(UserWarning):
        warnings.warn("legacy graph group", errors.LoomFormatWarning, stacklevel=1)


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "missing.loom"
    with pytest.raises(FileNotFoundError) as info:
        loomx.open_loom(missing)
    assert isinstance(info.value, errors.LoomFileNotFoundError)
    assert info.value.path == str(missing)
    assert str(missing) in str(info.value)


def test_public_names_are_the_errors():
    for name in errors.__all__:
        assert getattr(loomx, name) is getattr(errors, name), name
