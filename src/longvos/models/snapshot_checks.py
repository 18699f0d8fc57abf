"""Field checks that every family's ``check_snapshot`` hook shares (see :class:`longvos.models.base.TrackerState`).

A snapshot is plain data read back with ``torch.load(..., weights_only=True)``: it may come from another version,
another model or a damaged file, so each field is checked for its type before it is used. Each check raises a
one-line ``ValueError`` that starts with the field's name (``where``), and returns the checked value. What a family's
fields must hold beyond their types (passes and slots, memory frames, grids, tensor shapes) is checked in its own
state module; the messages here are those both families have always given, word for word, so that a user's and a
test's reading of them does not depend on which family wrote the snapshot.
"""
from __future__ import annotations

from typing import Any

import torch


def is_whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (an ``int`` and not a ``bool``, which is one to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_kind(data: Any, kind: str, what: str) -> dict:
    """``data`` if it is a dict whose ``kind`` is ``kind``; ``what`` names such a snapshot in the messages (e.g.
    ``"a LiVOS state snapshot"``)."""
    if not isinstance(data, dict):
        raise ValueError(f"the state is of type {type(data).__name__}, not {what}")
    if data.get("kind") != kind:
        raise ValueError(f"not {what} (kind {data.get('kind')!r})")
    return data


def _present(data: dict, key: str, where: str) -> Any:
    """``data[key]``, which must be there."""
    if key not in data:
        raise ValueError(f"{where} is missing")
    return data[key]


def whole_field(data: dict, key: str, where: str) -> int:
    """``data[key]``, which must be there and be a whole number."""
    value = _present(data, key, where)
    if not is_whole(value):
        raise ValueError(f"{where} is {value!r}, expected a whole number")
    return value


def list_field(data: dict, key: str, where: str) -> list:
    """``data[key]`` as a new list; it must be there and be a list (or a tuple, as a caller's own dict may hold)."""
    value = _present(data, key, where)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} is of type {type(value).__name__}, expected a list")
    return list(value)


def check_object_ids(object_ids: Any, wrong: str) -> list[int]:
    """``object_ids`` as a list: distinct whole numbers in a list or tuple. ``wrong`` ends the message when they
    are not a list of whole numbers (each family has its own wording, which its users and tests know)."""
    if not isinstance(object_ids, (list, tuple)) or not all(is_whole(i) for i in object_ids):
        raise ValueError(f"object_ids {object_ids!r} {wrong}")
    if len(set(object_ids)) != len(object_ids):
        raise ValueError(f"object_ids {list(object_ids)} repeat an id")
    return list(object_ids)


def check_tensor(value: Any, where: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...],
                 note: str = "") -> torch.Tensor:
    """``value``, which must be a tensor of ``shape`` and one of ``dtypes``. ``note``, if given, is said in
    parentheses after the expected shape (what the shape was derived from, e.g. ``"N = 2 objects"``)."""
    said = f" ({note})" if note else ""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where} is of type {type(value).__name__}, expected a tensor of shape {shape}{said}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{where} has shape {tuple(value.shape)}, expected {shape}{said}")
    if value.dtype not in dtypes:
        raise ValueError(f"{where} has dtype {value.dtype}, expected {' or '.join(map(str, dtypes))}")
    return value
