"""Config YAML is read within bounds: size, depth, no aliases, keys once, UTF-8 text."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from layerlock.config import load_config
from layerlock.errors import ConfigError, shorten
from layerlock.yaml_io import MAX_YAML_BYTES, decode_text, load_yaml, read_yaml

BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "run: {seed: [*h,*h,*h,*h,*h,*h,*h,*h,*h]}\n"
)


def test_alias_bomb_is_refused_quickly_without_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml line 2: aliases \(\*a\) are not supported"):
        load_config(path)
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_alias_in_an_override_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data\.augmentation: .*aliases \(\*a\)") as info:
        load_config(overrides=["data.augmentation={a: &a [1, 2], b: *a}"])
    assert "\n" not in str(info.value)


def test_repeated_key_is_named_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("run:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=r"line 4: key 'epochs' is given twice \(first on line 2\)"
    ):
        load_config(path)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_yaml("a: " + "[" * 200 + "]" * 200, "x")
    assert load_yaml("a: " + "[" * 20 + "]" * 20, "x") is not None


def test_large_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_YAML_BYTES + 1)
    with pytest.raises(
        ConfigError, match=r"big\.yaml is 1,048,577 bytes; config files are limited"
    ):
        read_yaml(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"a\.yaml is a binary file \(NUL byte at offset 8\)"),
        (b"run:\n  seed: caf\xe9\n", r"a\.yaml is not utf-8 text \(byte 0xe9 at offset 16\)"),
    ],
)
def test_binary_and_non_utf8_files_are_named(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_utf8_with_byte_order_mark_is_read() -> None:
    assert decode_text("\ufeffrun: {}".encode(), "x") == "run: {}"


def test_a_folder_or_fifo_given_as_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"fifo\.yaml is not a regular file"):
        load_config(fifo)


def test_long_values_are_abbreviated_in_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["run.epochs=" + "9" * 100_000, "run.precision=" + "x" * 100_000])
    text = str(info.value)
    assert len(text) < 1000 and "(100,002 characters)" in text
    assert shorten("ok") == "'ok'"


def test_too_long_out_dir_and_paths_of_the_other_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run\.out_dir: .* is too long a path") as info:
        load_config(overrides=["run.out_dir=" + "x" * 5000])
    assert len(str(info.value)) < 400
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    cases = {
        f"data.path={a_file}": rf"data\.path: {a_file} is a file, not a folder",
        f"data.train_csv={tmp_path}": rf"data\.train_csv: {tmp_path} is a folder, not a file",
        f"model.checkpoint={tmp_path}": rf"model\.checkpoint: {tmp_path} is a folder, not a file",
    }
    for override, message in cases.items():
        source = ["data=csv", f"data.val_csv={a_file}"] if "csv" in override else ["data=folder"]
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[*source, override])
