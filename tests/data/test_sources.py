"""The registry of data sources and load_train_val."""

from __future__ import annotations

import subprocess
import sys

import pytest

import layerlock.data
from layerlock.data import DATA_SOURCES, TrainVal, data_source, load_train_val
from layerlock.data.sources import SOURCES
from layerlock.errors import ConfigError, MissingDependencyError


def test_load_train_val_csv_and_folder(tmp_path, tree, tf, make_image, make_csv):
    for i in range(3):
        make_image(tmp_path / f"{i}.jpg", i)
    make_csv(tmp_path / "t.csv", [("0.jpg", "a"), ("1.jpg", "b")])
    make_csv(tmp_path / "v.csv", [("2.jpg", "b")])
    data = load_train_val(
        "csv", transforms=tf, train_csv=tmp_path / "t.csv", val_csv=tmp_path / "v.csv"
    )
    assert data.classes == ["a", "b"] and data.val.targets == [1]
    data = load_train_val("folder", transforms=tf, path=tree)
    assert isinstance(data, TrainVal) and len(data.train) == 6
    with pytest.raises(ConfigError, match=r"unknown data source 'folders'; did you mean 'folder'"):
        load_train_val("folders", transforms=tf)
    with pytest.raises(ConfigError, match="data=csv needs train_csv and val_csv"):
        load_train_val("csv", transforms=tf)


def test_missing_paths_are_named_per_source(tf):
    with pytest.raises(ConfigError, match="data=folder needs data_path"):
        load_train_val("folder", transforms=tf)
    with pytest.raises(ConfigError, match="data=hf needs data_path"):
        load_train_val("hf", transforms=tf)


def test_hf_without_datasets_says_how_to_install(monkeypatch, tf):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"pip install datasets"):
        load_train_val("hf", transforms=tf, path="beans")


def test_registry_holds_every_source_once_in_order():
    assert DATA_SOURCES == ("demo", "folder", "csv", "hf")
    assert tuple(SOURCES) == DATA_SOURCES
    for name in DATA_SOURCES:
        source = data_source(name)
        assert source.name == name and callable(source.load) and source.description
    with pytest.raises(TypeError):
        SOURCES["x"] = SOURCES["demo"]  # type: ignore[index]


def test_unknown_source_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown data source 'zzz' Use one of: demo, folder"):
        data_source("zzz")


def test_old_names_are_aliases_of_the_new_ones():
    assert layerlock.data.Splits is TrainVal
    assert layerlock.data.load_splits is load_train_val


def test_sources_module_imports_neither_torch_nor_pil_itself():
    """The registry module is light: its own imports are the standard library and errors."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(layerlock.data.sources.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m.split(".")[0] in {"torch", "PIL", "numpy", "timm"}}


def test_data_modules_import_without_a_cycle():
    """Whichever module is imported first, the rest follow (a cycle fails one of these)."""
    rest = "import layerlock.data.datasets, layerlock.data.transforms, layerlock.data.loading"
    for first in ("layerlock.data.sources", "layerlock.data.demo", "layerlock.demo"):
        code = f"import {first}; {rest}; import layerlock.data.sources, layerlock.demo"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_config_accepts_exactly_the_registered_sources():
    from layerlock import config

    assert tuple(config.DATA_SOURCES) == DATA_SOURCES
