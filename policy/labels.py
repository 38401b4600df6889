"""Labels and label selectors, as Kubernetes defines them.

A label is ``KEY=VALUE``. KEY is ``[PREFIX/]NAME``: NAME 1-63 characters of
``[A-Za-z0-9._-]`` starting and ending alphanumeric; PREFIX a DNS subdomain (lowercase,
<= 253). VALUE is empty or like NAME. A selector (``podSelector``) is the AND of::

    matchLabels        {k: v}          the label k has value v
    matchExpressions   In [vs]         k is present with a value in vs   (vs non-empty)
                       NotIn [vs]      k is absent, or its value is not in vs (vs non-empty)
                       Exists          k is present                     (no values)
                       DoesNotExist    k is absent                      (no values)

The empty selector ``{}`` selects everything. ``impossible`` finds selectors that can
never match (``app: web`` and ``app NotIn [web]``; Exists and DoesNotExist of one key);
documents holding one are refused, since such a policy is always a mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LABELS = 64
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

Labels = tuple[tuple[str, str], ...]   # sorted (key, value) pairs


class PolicyError(ValueError):
    """Bad input in a document, a label or a selector: ``where`` names the document and
    field (``NetworkPolicy db-allow: spec.podSelector.matchLabels``), ``str()`` is one line."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message

    @property
    def reason(self) -> str:
        return str(self)


def key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not key:
        return "a label key must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return f"bad label key {key[:80]!r}: its prefix must be a DNS subdomain"
    if not _NAME.match(name):
        return (f"bad label key {key[:80]!r}: 1-63 characters of [A-Za-z0-9._-], beginning "
                "and ending alphanumeric")
    return None


def value_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "a label value must be a string"
    if value and not _NAME.match(value):
        return (f"bad label value {value[:80]!r}: at most 63 characters of [A-Za-z0-9._-], "
                "beginning and ending alphanumeric")
    return None


def check_labels(labels: Mapping[str, Any], where: str = "labels") -> Labels:
    """Validated labels as sorted pairs; raises PolicyError."""
    if len(labels) > MAX_LABELS:
        raise PolicyError(where, f"more than {MAX_LABELS} labels")
    for k, v in labels.items():
        problem = key_problem(k) or value_problem(v)
        if problem is not None:
            raise PolicyError(where, problem)
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def parse_label_args(texts: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` words (the CLI's ``--label``) as a dict; raises PolicyError."""
    out: dict[str, str] = {}
    for text in texts:
        key, eq, value = text.partition("=")
        if not eq:
            raise PolicyError("label", f"{text[:80]!r} is not KEY=VALUE")
        out[key] = value
    check_labels(out, "label")
    return out


@dataclass(frozen=True, slots=True)
class Expression:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector; ``Selector()`` selects everything."""

    match_labels: Labels = ()
    expressions: tuple[Expression, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(e.matches(labels) for e in self.expressions))

    @property
    def everything(self) -> bool:
        return not self.match_labels and not self.expressions

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.expressions:
            out["matchExpressions"] = [
                {"key": e.key, "operator": e.operator, **({"values": list(e.values)}
                                                          if e.values else {})}
                for e in self.expressions]
        return out

    def describe(self) -> str:
        """One line: ``app=web,tier in (a,b),!legacy``; ``all`` for the empty selector."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for e in self.expressions:
            if e.operator == "In":
                parts.append(f"{e.key} in ({','.join(e.values)})")
            elif e.operator == "NotIn":
                parts.append(f"{e.key} notin ({','.join(e.values)})")
            elif e.operator == "Exists":
                parts.append(e.key)
            else:
                parts.append(f"!{e.key}")
        return ",".join(parts) or "all"


def _fields(obj: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise PolicyError(where, "must be a mapping")
    for key in obj:
        if key not in allowed:
            raise PolicyError(f"{where}.{key}", f"unknown field (expected one of {', '.join(allowed)})")
    return obj


def parse_selector(obj: Any, where: str) -> Selector:
    """A ``podSelector`` mapping (``None`` or ``{}``: everything); raises PolicyError."""
    body = _fields(obj, where, ("matchLabels", "matchExpressions"))
    labels = body.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{where}.matchLabels", "must be a mapping of label keys to values")
    match_labels = check_labels(labels, f"{where}.matchLabels")
    exprs_obj = body.get("matchExpressions") or []
    if not isinstance(exprs_obj, list):
        raise PolicyError(f"{where}.matchExpressions", "must be a list")
    exprs = []
    for i, item in enumerate(exprs_obj):
        at = f"{where}.matchExpressions[{i}]"
        e = _fields(item, at, ("key", "operator", "values"))
        key, op, values = e.get("key"), e.get("operator"), e.get("values")
        problem = key_problem(key)
        if problem is not None:
            raise PolicyError(f"{at}.key", problem)
        if op not in OPERATORS:
            raise PolicyError(f"{at}.operator", f"{str(op)[:40]!r} is not one of {', '.join(OPERATORS)}")
        values = [] if values is None else values
        if not isinstance(values, list):
            raise PolicyError(f"{at}.values", "must be a list of strings")
        for v in values:
            problem = value_problem(v)
            if problem is not None:
                raise PolicyError(f"{at}.values", problem)
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{at}.values", f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{at}.values", f"operator {op} takes no values")
        exprs.append(Expression(str(key), str(op), tuple(sorted(set(values)))))
    selector = Selector(match_labels, tuple(exprs))
    why = impossible(selector)
    if why is not None:
        raise PolicyError(where, f"can never match: {why}")
    return selector


def impossible(selector: Selector) -> str | None:
    """Why no set of labels can match ``selector``, or None when some can."""
    allowed: dict[str, set[str] | None] = {}     # key -> values it may have (None: any)
    present: set[str] = set()
    absent: set[str] = set()
    for k, v in selector.match_labels:
        allowed[k] = {v}
        present.add(k)
    for e in selector.expressions:
        if e.operator == "In":
            held = allowed.get(e.key)
            allowed[e.key] = set(e.values) if held is None else held & set(e.values)
            present.add(e.key)
        elif e.operator == "Exists":
            present.add(e.key)
        elif e.operator == "DoesNotExist":
            absent.add(e.key)
    for e in selector.expressions:
        if e.operator == "NotIn" and e.key in allowed:
            held = allowed[e.key]
            if held is not None:
                allowed[e.key] = held - set(e.values)
    for key in sorted(present & absent):
        return f"label {key!r} must both exist and not exist"
    for key in sorted(allowed):
        if allowed[key] is not None and not allowed[key]:
            return f"no value of label {key!r} satisfies every condition on it"
    return None
