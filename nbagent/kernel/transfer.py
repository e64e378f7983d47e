"""Moving variables between host and kernel in safe formats only.

Generated code is untrusted, so nothing that comes from the kernel is ever unpickled here:

* JSON-able values (None, bool, int, float incl. NaN/inf, str, lists, tuples → lists, dicts
  with string keys) travel as JSON text;
* numpy arrays as ``.npy`` bytes, read back with ``np.load(allow_pickle=False)`` (object arrays
  are refused on both sides);
* pandas DataFrames as Parquet when both sides have pyarrow ≥ 14.0.1 (earlier versions could
  unpickle extension types: CVE-2023-47248), else pandas' JSON "table" format, which keeps the
  schema (dtypes, index) as far as JSON allows;
* anything else is a :class:`~nbagent.core.errors.TransferError` naming the type.

The kernel side of the codec lives in ``kernelside/inkernel.py`` (kernel-side source, no nbagent
imports); this module is the host side. Even if kernel code tampers with its helper, the host
only ever runs ``json.loads``, ``np.load(allow_pickle=False)``, ``pyarrow`` or ``pd.read_json``
on what comes back.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import keyword
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from nbagent.core.errors import TransferError

__all__ = [
    "TRANSFER_MIME",
    "check_names",
    "decode_item",
    "encode_values",
    "host_formats",
    "transfer_bundle",
]

TRANSFER_MIME = "application/vnd.nbagent.transfer+json"
_MAX_DEPTH = 100


def check_names(names: Iterable[str]) -> list[str]:
    """Return ``names`` as a list, or raise TransferError for one that is not a Python name."""
    out = []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise TransferError(f"{name!r} is not a valid Python variable name")
        out.append(name)
    return out


@cache
def _pyarrow_is_safe() -> bool:
    if importlib.util.find_spec("pyarrow") is None or importlib.util.find_spec("pandas") is None:
        return False
    from importlib.metadata import version

    parts = []
    for piece in version("pyarrow").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= (14, 0, 1)


def host_formats(kernel_has_pyarrow: bool) -> list[str]:
    """DataFrame formats both sides can read, best first."""
    return (
        ["parquet", "json-table"] if kernel_has_pyarrow and _pyarrow_is_safe() else ["json-table"]
    )


def _type_name(v: Any) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _plain(v: Any, where: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise TransferError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x, where, depth + 1) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise TransferError(f"{where}: a dict key of type {_type_name(k)} is not a string")
            out[k] = _plain(x, where, depth + 1)
        return out
    raise TransferError(
        f"{where}: a {_type_name(v)} cannot be transferred safely "
        "(JSON values, numpy arrays and pandas DataFrames can)"
    )


def _encode_one(name: str, value: Any, formats: list[str]) -> dict[str, Any]:
    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    if np is not None and isinstance(value, np.ndarray):
        buf = io.BytesIO()
        try:
            np.save(buf, value, allow_pickle=False)
        except ValueError:
            raise TransferError(
                f"{name!r}: an array of dtype {value.dtype} cannot be sent without pickle"
            ) from None
        return {"kind": "ndarray", "b64": base64.b64encode(buf.getvalue()).decode("ascii")}
    if np is not None and isinstance(value, np.generic) and value.ndim == 0:
        value = value.item()
    if pd is not None and isinstance(value, pd.DataFrame):
        if "parquet" in formats:
            buf = io.BytesIO()
            try:
                value.to_parquet(buf, engine="pyarrow")
                data = base64.b64encode(buf.getvalue()).decode("ascii")
                return {"kind": "dataframe", "format": "parquet", "b64": data}
            except Exception:  # fall back to the JSON table format
                pass
        try:
            text = value.to_json(orient="table", date_format="iso", date_unit="ns")
        except Exception as exc:
            raise TransferError(f"{name!r}: the DataFrame cannot be encoded: {exc}") from None
        return {"kind": "dataframe", "format": "json-table", "json": text}
    return {"kind": "json", "json": json.dumps(_plain(value, repr(name)), allow_nan=True)}


def encode_values(values: Mapping[str, Any], formats: list[str]) -> str:
    """Encode ``values`` for the kernel's ``_push``; raises TransferError for unsafe ones."""
    names = check_names(values)
    return json.dumps({n: _encode_one(n, values[n], formats) for n in names})


def decode_item(name: str, item: Any) -> Any:
    """Decode one value that came from the kernel, refusing anything but the safe formats."""
    if not isinstance(item, dict):
        raise TransferError(f"{name!r}: the kernel sent a malformed transfer record")
    kind = item.get("kind")
    if kind == "missing":
        raise TransferError(f"no variable named {name!r} in the kernel")
    if kind == "error":
        raise TransferError(f"{name!r}: {item.get('reason') or 'cannot be transferred'}")
    try:
        if kind == "json":
            return json.loads(item["json"])
        if kind == "ndarray":
            import numpy as np

            raw = base64.b64decode(item["b64"], validate=True)
            return np.load(io.BytesIO(raw), allow_pickle=False)
        if kind == "dataframe":
            import pandas as pd

            if item.get("format") == "parquet":
                if not _pyarrow_is_safe():
                    raise TransferError(f"{name!r}: Parquet needs pyarrow >= 14.0.1 in the host")
                raw = base64.b64decode(item["b64"], validate=True)
                return pd.read_parquet(io.BytesIO(raw), engine="pyarrow")
            if item.get("format") == "json-table":
                return pd.read_json(io.StringIO(item["json"]), orient="table")
    except TransferError:
        raise
    except ImportError as exc:
        raise TransferError(f"{name!r}: the host needs {exc.name} to receive this value") from None
    except Exception as exc:
        raise TransferError(
            f"{name!r}: refused a {kind} value from the kernel: {type(exc).__name__}: {exc}"
        ) from None
    raise TransferError(f"{name!r}: unknown transfer format {kind!r} from the kernel")


def transfer_bundle(reply: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The transfer payload a user expression returned, if any."""
    value = (reply.get("user_expressions") or {}).get(key) or {}
    data = (value.get("data") or {}).get(TRANSFER_MIME)
    return data if isinstance(data, dict) else None
