"""``weft attach --label``, ``weft label``, ``weft policy apply|delete|list``: the CLI through
the API to a fake control that keeps policies in a real ``PolicyService``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import FakeControl
from tests.unit.test_cli import api_server, assert_one_line_error, run_cli
from weftnet.policy.documents import parse_documents
from weftnet.policy.labels import PolicyError
from weftnet.policy.service import PolicyService
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.programs import cli

DB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-allow}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
"""


class PolicyControl(FakeControl):
    def __init__(self) -> None:
        super().__init__()
        self.service = PolicyService(1, 0.0)

    async def attach(self, container: str, addresses: list[str], name: str | None,
                     without_dns: bool, ifname: str = "ethwe",
                     labels: dict[str, str] | None = None) -> list[str]:
        self.calls.append(("attach", (container, ifname, labels)))
        try:
            self.service.set_container(container, labels or {}, ["10.0.0.2"], 1.0)
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None
        return ["10.0.0.2/24"]

    async def label(self, container: str, add: dict[str, str], remove: list[str]) -> dict[str, str]:
        self.calls.append(("label", (container, add, remove)))
        return self.service.relabel(container, ["10.0.0.2"], add, remove, 2.0)

    def policy_apply(self, text: str, source: str) -> list[str]:
        self.calls.append(("policy_apply", source))
        try:
            return self.service.apply(parse_documents(text, source), 3.0)
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None

    def policy_delete(self, name: str) -> None:
        try:
            self.service.delete(name, 4.0)
        except PolicyError as exc:
            raise LocalProtocolError(exc.reason) from None

    def report(self) -> dict[str, Any]:
        report = super().report()
        workloads = self.service.store.workloads()
        report["policy"] = {"enforcement": {"ok": True, "chains": 1, "table": "inet weft-policy"},
                            "in_force": [], "drops": {}, "workloads": [],
                            "policies": [{"name": p.name, "rules": p.rules_line(), "drops": 0,
                                          "selected": sorted(w.container for w in workloads
                                                             if p.selector.matches(dict(w.labels)))}
                                         for p in self.service.policies()]}
        return report


def test_labels_and_policies_from_the_command_line(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = PolicyControl()
    with api_server(ctl) as (addr, _):
        api = ("--http-addr", addr)
        assert run_cli(capsys, "attach", *api, "--label", "app=web", "--label", "tier=a", "db") \
            == (0, "10.0.0.2/24\n", "")
        assert ctl.calls[-1] == ("attach", ("db", "ethwe", {"app": "web", "tier": "a"}))
        assert run_cli(capsys, "label", *api, "db", "app=db", "--remove", "tier") == (0, "app=db\n", "")
        status, _, err = run_cli(capsys, "label", *api, "db", "app")
        assert status == 2 and "label 'app' is not KEY=VALUE" in assert_one_line_error(err)
        status, _, err = run_cli(capsys, "label", *api, "db", "a b=c")
        assert status == 1 and "bad label key 'a b'" in assert_one_line_error(err)

        path = tmp_path / "db.yaml"
        path.write_text(DB.replace("5432", "http"))
        status, _, err = run_cli(capsys, "policy", *api, "apply", str(path))
        assert status == 1 and assert_one_line_error(err).startswith(
            "NetworkPolicy db-allow: spec.ingress[0].ports[0].port: named ports")
        path.write_text(DB)
        assert run_cli(capsys, "policy", *api, "apply", str(path)) == (0, "db-allow\n", "")
        monkeypatch.setattr(cli.sys, "stdin", io.StringIO(DB))
        assert run_cli(capsys, "policy", *api, "apply", "-") == (0, "", "")   # nothing changed
        assert ctl.calls[-1] == ("policy_apply", "stdin")
        assert run_cli(capsys, "policy", *api, "list") == (
            0, "db-allow db       ingress: from app=web on tcp/5432\n", "")
        status, out, _ = run_cli(capsys, "status", *api, "policy")
        assert status == 0 and out.splitlines()[0].strip().startswith("Enforcement: ok")
        assert run_cli(capsys, "policy", *api, "delete", "db-allow") == (0, "", "")
        status, _, err = run_cli(capsys, "policy", *api, "delete", "db-allow")
        assert status == 1 and assert_one_line_error(err) == "NetworkPolicy db-allow: no such policy"
        status, _, err = run_cli(capsys, "policy", *api, "apply")
        assert status == 2 and "policy apply needs FILE (or -)" in assert_one_line_error(err)
        status, _, err = run_cli(capsys, "policy", *api, "apply", str(tmp_path / "missing"))
        assert status == 1 and "cannot read" in assert_one_line_error(err)
