"""The public surface of edge_client: curated exports, typed, one exception tree."""

from __future__ import annotations

import inspect
from pathlib import Path

import edge_client
from edge_client import errors


def test_exports_exist_and_private_modules_stay_private() -> None:
    assert sorted(edge_client.__all__) == edge_client.__all__
    for name in edge_client.__all__:
        assert hasattr(edge_client, name), name
    assert not [n for n in edge_client.__all__ if n.startswith("_") and n != "__version__"]
    assert (Path(edge_client.__file__).parent / "py.typed").is_file()


def test_every_exception_is_in_the_documented_tree() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 8
    for cls in classes:
        assert issubclass(cls, errors.EdgeError)
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree"
    assert issubclass(errors.ServerUnavailable, errors.ServerError)
    assert issubclass(errors.BundleIntegrityError, errors.BundleError)
