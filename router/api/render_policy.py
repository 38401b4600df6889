"""``weft status policy``, ``weft policy list`` and the policy block of ``weft status``:
pure functions of the report's ``policy`` section (``router/daemon/policy_driver.py``).

Summary block (in ``weft status``)::

            Service: policy
        Enforcement: ok (table inet weft-policy, 2 chains)        or   FAILED: <why>
           Policies: 2 (1 selecting containers on this host)
             Labels: 3 containers in the mesh (1 here)

``weft policy list``: one line per policy, columns aligned: NAME, the containers it selects
(mesh-wide), its rules in one line. ``weft status policy`` adds the drops per policy and
the enforcement line first, so a failure is the first thing seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weftnet.proto.errors import LocalProtocolError

KEY_WIDTH = 15


def _kv(key: str, value: object) -> str:
    return f"{key:>{KEY_WIDTH}}: {value}"


def enforcement_text(policy: Mapping[str, Any]) -> str:
    enf = policy["enforcement"]
    if enf.get("ok") is False:
        return f"FAILED: {enf.get('error')} (policies are NOT enforced on this host)"
    if enf.get("ok") is None:
        return "not installed yet"
    chains = int(enf.get("chains", 0))
    if not chains:
        return "ok (nothing to enforce on this host)"
    return f"ok (table {enf.get('table')}, {chains} chain{'s' if chains != 1 else ''})"


def policy_section(policy: Mapping[str, Any]) -> list[str]:
    policies = policy["policies"]
    here = sum(1 for p in policy["policies"] if p.get("selected_here"))
    workloads = policy.get("workloads", [])
    local = sum(1 for w in workloads if w.get("local"))
    return [_kv("Service", "policy"), _kv("Enforcement", enforcement_text(policy)),
            _kv("Policies", f"{len(policies)} ({here} selecting containers on this host)"),
            _kv("Labels", f"{len(workloads)} containers in the mesh ({local} here)")]


def _selected(p: Mapping[str, Any]) -> str:
    return ",".join(p["selected"]) or "-"


def render_policy_list(policy: Mapping[str, Any] | None) -> str:
    if policy is None:
        raise LocalProtocolError("this router does not report network policy")
    try:
        rows = [(str(p["name"]), _selected(p), str(p["rules"])) for p in policy["policies"]]
    except (KeyError, TypeError) as exc:
        raise LocalProtocolError(f"the router's policy report is malformed: {exc}") from None
    w0 = max([4, *(len(r[0]) for r in rows)])
    w1 = max([8, *(len(r[1]) for r in rows)])
    return "".join(f"{a:<{w0}} {b:<{w1}} {c}".rstrip() + "\n" for a, b, c in rows)


def policy_view(report: Mapping[str, Any]) -> list[str]:
    policy = report.get("policy")
    if policy is None:
        raise LocalProtocolError("this router does not report network policy")
    lines = [_kv("Enforcement", enforcement_text(policy))]
    rows = [(str(p["name"]), _selected(p), str(p.get("drops", 0)), str(p["rules"]))
            for p in policy["policies"]]
    if rows:
        widths = [max([len(h), *(len(r[i]) for r in rows)])
                  for i, h in enumerate(("NAME", "SELECTED", "DROPS"))]
        lines.append(f"{'NAME':<{widths[0]}} {'SELECTED':<{widths[1]}} {'DROPS':>{widths[2]}} RULES")
        lines += [f"{a:<{widths[0]}} {b:<{widths[1]}} {c:>{widths[2]}} {d}" for a, b, c, d in rows]
    return lines


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
