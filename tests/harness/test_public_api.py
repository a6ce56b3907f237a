"""`harness.__all__` is the public API: each name exists, is exported once, in order, and the
package docstring's front doors are among them."""

from __future__ import annotations

import re

import harness


def test_every_exported_name_exists_and_the_list_is_sorted() -> None:
    assert harness.__all__ == sorted(set(harness.__all__))
    for name in harness.__all__:
        assert getattr(harness, name) is not None, name


def test_the_front_doors_in_the_docstring_are_exported() -> None:
    doors = re.findall(r"^    (\w+)\(", harness.__doc__ or "", re.M)
    assert len(doors) == 5
    assert set(doors) <= set(harness.__all__)
