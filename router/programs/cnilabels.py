"""Labels of a container attached by the CNI plugin, for network policy.

Where they come from, all merged (a later source overrides a key of an earlier one)::

    args.cni.labels   [{"key": K, "value": V}, ...]   (the CNI conventions' form) or {K: V}
    args.labels       {K: V}
    CNI_ARGS          LABELS=K=V,K2=V2                 (one variable, pairs split by commas)

Keys and values are checked here as the router checks them (``weftnet.policy.labels``),
so a bad label fails ADD with a CNI error before anything is attached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weftnet.policy.labels import PolicyError, check_labels
from weftnet.router.programs.cnispec import ERR_INVALID_CONFIG, CniError

CNI_ARGS_KEY = "LABELS"


def _pairs(value: Any, what: str) -> dict[str, str]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or set(item) - {"key", "value"} or "key" not in item:
                raise CniError(ERR_INVALID_CONFIG, f"{what}[{i}] must be {{\"key\": K, \"value\": V}}")
            items.append((item["key"], item.get("value", "")))
    else:
        raise CniError(ERR_INVALID_CONFIG, f"{what} must be a list of {{key, value}} or a mapping")
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str):
            raise CniError(ERR_INVALID_CONFIG, f"{what}: label keys and values must be strings")
        out[k] = v
    return out


def cni_labels(conf: Mapping[str, Any], args: Mapping[str, str]) -> dict[str, str]:
    """The container's labels (empty when none are given); raises CniError."""
    out: dict[str, str] = {}
    raw = conf.get("args")
    conf_args: dict[str, Any] = raw if isinstance(raw, dict) else {}
    raw_cni = conf_args.get("cni")
    cni: dict[str, Any] = raw_cni if isinstance(raw_cni, dict) else {}
    if cni.get("labels") is not None:
        out.update(_pairs(cni["labels"], "args.cni.labels"))
    if conf_args.get("labels") is not None:
        out.update(_pairs(conf_args["labels"], "args.labels"))
    text = args.get(CNI_ARGS_KEY, "")
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not eq:
            raise CniError(ERR_INVALID_CONFIG, f"CNI_ARGS {CNI_ARGS_KEY}: {word[:60]!r} is not KEY=VALUE")
        out[key] = value
    try:
        check_labels(out, "labels")
    except PolicyError as exc:
        raise CniError(ERR_INVALID_CONFIG, exc.reason) from None
    return out
