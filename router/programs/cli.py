"""``weft``: the command line, a thin client of the router's HTTP API.

Theory of operation
-------------------
Every command but ``launch --foreground``, ``version`` and ``demo`` is one HTTP call to
the API on ``--http-addr`` (env ``WEFT_HTTP_ADDR``, default ``127.0.0.1:6784``), made with
``urllib.request`` because it imports fast and the CLI runs often. Nothing heavy (trio,
hypercorn, the router) is imported until a command needs it.

Background launch::

    weft launch ARGS ──validate──▶ data dir locked? API answering? ──▶ error, exit 1
        │ spawn: python -m weftnet.router.programs.cli launch --foreground <normalised options>
        │        new session, stdin /dev/null, stdout+stderr appended to DIR/weft.log,
        │        password in WEFT_PASSWORD (never argv), or --password-file's path
        ├─ poll GET /version every 50 ms (≤ 20 s)
        │    child exited first ─▶ its last log line as the error, exit 1
        └─ answered ─▶ GET /report, print router.name, exit 0

Errors: every failure is one line ``weft: <message>`` on stderr and a non-zero exit:
1 for operational errors (LocalProtocolError, API errors, no router), 2 for usage
errors and internal errors (``weft: internal error: ...``; the traceback only with
``WEFT_DEBUG`` set). argparse's usage-and-exit is replaced by the same one-line form.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import weftnet
from weftnet.proto.errors import LocalProtocolError
from weftnet.router.api.address import default_http_addr, parse_http_addr, parse_peer_address
from weftnet.router.api.client import ApiClient, Interrupted, NotRunning
from weftnet.router.api.text import one_line

if TYPE_CHECKING:
    from weftnet.router.host.datadir import DataDir

PROG = "weft"
LAUNCH_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
ATTACH_TIMEOUT = 60.0
STATUS_VIEWS = ("targets", "connections", "peers", "dns", "ipam", "policy")
MAX_DNS_NAME_ARG = 1024           # dns-lookup NAME: longer cannot be a name, nor fit a URL


class UsageError(Exception):
    """Bad command line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        where = self.prog if self.prog != PROG else ""
        prefix = where.removeprefix(PROG + " ") + ": " if where else ""
        raise UsageError(f"{prefix}{message} (see '{self.prog} --help')")


def _client(ns: argparse.Namespace) -> ApiClient:
    if getattr(ns, "http_addr", None) is not None:
        try:
            return ApiClient(parse_http_addr(ns.http_addr))
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"--http-addr: {exc.reason}") from None
    return ApiClient(default_http_addr())


def _wait_until_gone(client: ApiClient, deadline: float) -> bool:
    """Poll until the API stops answering; False on timeout."""
    while time.monotonic() < deadline:
        if not client.answers():
            return True
        time.sleep(POLL_INTERVAL)
    return False


def _wait_unlocked(datadir: DataDir | None, deadline: float) -> None:
    while datadir is not None and datadir.is_locked() and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)


def _router_data_dir(client: ApiClient, explicit: str | None) -> DataDir | None:
    """The running router's data dir: --data-dir, else what its report says, else None."""
    from weftnet.router.host.datadir import DataDir

    if explicit is not None:
        if not explicit.strip():  # "" would be the current directory
            raise UsageError("--data-dir: empty path")
        return DataDir(Path(explicit).absolute())
    try:
        report = client.call("GET", "/report", timeout=5.0)
        path = report["router"].get("data_dir")
    except (LocalProtocolError, NotRunning, Interrupted, KeyError, TypeError, AttributeError):
        return None
    return DataDir(path) if isinstance(path, str) and path else None


# -- commands -----------------------------------------------------------------------------


def cmd_launch(ns: argparse.Namespace) -> int:
    from weftnet.router.daemon.config import config_from_args, config_to_args
    from weftnet.router.host.datadir import DataDir

    config = config_from_args(ns)
    if config.foreground:
        # Children of the router (ip, iptables...) need not see the password.
        os.environ.pop("WEFT_PASSWORD", None)
        run = _import_attr("weftnet.router.daemon.router", "run", "the router daemon")
        status: int = run(config)
        return status

    datadir = DataDir(config.data_dir)
    if datadir.is_locked():
        pid = datadir.running_pid()
        suffix = f" (pid {pid})" if pid is not None else ""
        raise LocalProtocolError(
            f"another router is already running with data dir {config.data_dir}{suffix}"
        )
    client = ApiClient(config.http_addr)
    if client.answers():
        raise LocalProtocolError(f"a router is already running (API on {client.where})")

    datadir.create()
    log_path = datadir.log_path
    try:
        log_start = log_path.stat().st_size
    except OSError:
        log_start = 0
    env = {k: v for k, v in os.environb.items() if k != b"WEFT_PASSWORD"}
    if config.password is not None and config.password_file is None:
        env[b"WEFT_PASSWORD"] = config.password  # a password file goes by its path
    env[b"WEFT_DAEMONIZED"] = b"1"
    argv = [sys.executable, "-m", "weftnet.router.programs.cli", "launch", "--foreground"]
    argv += config_to_args(config)
    try:
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        raise LocalProtocolError(f"cannot start the router: {exc.strerror or exc}") from None

    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while True:
        exit_status = child.poll()
        if exit_status is not None:
            line = _last_log_line(log_path, log_start)
            raise LocalProtocolError(line or f"the router exited with status {exit_status}")
        try:
            client.call("GET", "/version", timeout=1.0)
            break
        except (NotRunning, Interrupted, LocalProtocolError):
            pass  # not bound, or bound but not serving yet
        if time.monotonic() >= deadline:
            raise LocalProtocolError(
                f"the router (pid {child.pid}) did not answer on {client.where} within "
                f"{LAUNCH_TIMEOUT:.0f} s; see {log_path}"
            )
        time.sleep(POLL_INTERVAL)
    report = client.call("GET", "/report")
    try:
        name = report["router"]["name"]
    except (KeyError, TypeError):
        raise LocalProtocolError("the router's report has no router.name") from None
    print(name)
    return 0


def _last_log_line(path: Path, start: int) -> str:
    """The last non-empty line the child wrote, without our own ``weft: `` prefix."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            tail = f.read()[-65536:]
    except OSError:
        return ""
    for raw in reversed(tail.decode("utf-8", "replace").splitlines()):
        line = raw.strip()
        if line:
            return line.removeprefix(f"{PROG}: ")
    return ""


def cmd_stop(ns: argparse.Namespace) -> int:
    client = _client(ns)
    datadir = _router_data_dir(client, ns.data_dir)
    try:
        client.call("POST", "/stop", {})
    except NotRunning:
        print(f"{PROG} router is not running", file=sys.stderr)
        return 0
    except Interrupted:
        pass  # the router went down before its answer was out: what we asked for
    _wait_for_stop(client, datadir)
    return 0


def cmd_reset(ns: argparse.Namespace) -> int:
    from weftnet.router.daemon.config import default_data_dir
    from weftnet.router.host.datadir import DataDir

    client = _client(ns)
    datadir = _router_data_dir(client, ns.data_dir)
    try:
        client.call("POST", "/reset", {})
    except NotRunning:
        pass
    except Interrupted:
        _wait_for_stop(client, datadir)
    else:
        _wait_for_stop(client, datadir)
    target = datadir or DataDir(default_data_dir().absolute())
    if not target.is_locked():  # no router (any more): remove what one left on this host
        from weftnet.router.host import teardown

        if teardown.router_here():
            raise LocalProtocolError(
                "a router runs in this network namespace but does not answer on "
                f"{client.where}: give its --http-addr (and --data-dir)")
        teardown.reset_host(target)
    target.remove()
    return 0


def _wait_for_stop(client: ApiClient, datadir: DataDir | None) -> None:
    """After POST /stop or /reset: the API gone, then the data dir released."""
    deadline = time.monotonic() + STOP_TIMEOUT
    if not _wait_until_gone(client, deadline):
        raise LocalProtocolError(f"the router did not stop within {STOP_TIMEOUT:.0f} s")
    _wait_unlocked(datadir, deadline)


def _peer_args(texts: Sequence[str]) -> list[str]:
    """Check PEER arguments here (a clear error before any call), but send them as
    given: a missing port means the router's own port, which only the router knows."""
    for text in texts:
        parse_peer_address(text)
    return [t.strip() for t in texts]


def cmd_connect(ns: argparse.Namespace) -> int:
    peers = _peer_args(ns.peers)
    if not peers and not ns.replace:
        raise UsageError("connect: give at least one PEER (or --replace to drop all targets)")
    _client(ns).call("POST", "/connect", {"peers": peers, "replace": bool(ns.replace)})
    return 0


def cmd_forget(ns: argparse.Namespace) -> int:
    peers = _peer_args(ns.peers)
    _client(ns).call("POST", "/forget", {"peers": peers})
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from weftnet.router.api.render import render_status

    report = _client(ns).call("GET", "/report")
    if not isinstance(report, dict):
        raise LocalProtocolError("the router's report is not a JSON object")
    sys.stdout.write(render_status(report, ns.view))
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    report = _client(ns).call("GET", "/report")
    print(json.dumps(report, indent=2))
    return 0


def parse_labels(texts: Sequence[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict (the router checks keys and values)."""
    out: dict[str, str] = {}
    for text in texts or ():
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise UsageError(f"label {text[:80]!r} is not KEY=VALUE")
        out[key] = value
    return out


def cmd_attach(ns: argparse.Namespace) -> int:
    *addresses, container = ns.args
    body: dict[str, Any] = {"container": container, "addresses": addresses, "name": ns.name,
                            "without_dns": bool(ns.without_dns)}
    if ns.label:
        body["labels"] = parse_labels(ns.label)
    answer = _client(ns).call("POST", "/attach", body, timeout=ATTACH_TIMEOUT)
    for cidr in answer.get("cidrs", []) if isinstance(answer, dict) else []:
        print(cidr)
    return 0


def cmd_detach(ns: argparse.Namespace) -> int:
    *addresses, container = ns.args
    _client(ns).call("POST", "/detach", {"container": container, "addresses": addresses},
                     timeout=ATTACH_TIMEOUT)
    return 0


def cmd_ps(ns: argparse.Namespace) -> int:
    from weftnet.router.api.render import render_ps

    answer = _client(ns).call("GET", "/ps")
    sys.stdout.write(render_ps(answer.get("containers", []) if isinstance(answer, dict) else []))
    return 0


def split_dns_args(args: Sequence[str], command: str) -> tuple[list[str], str | None]:
    """``[IP...] [CONTAINER]``: the words that are IPv4 or IPv6 addresses (``IP/LEN`` is
    taken as IP), and the one that is not, the container."""
    import ipaddress

    addresses: list[str] = []
    container: str | None = None
    for word in args:
        try:
            addresses.append(str(ipaddress.ip_interface(word.strip()).ip))
            continue
        except ValueError:
            pass
        if container is not None:
            raise UsageError(f"{command}: give at most one CONTAINER (got {container!r} and {word!r})")
        container = word
    return addresses, container


def cmd_dns_add(ns: argparse.Namespace) -> int:
    addresses, container = split_dns_args(ns.args, "dns-add")
    if not addresses and container is None:
        raise UsageError("dns-add: give IP addresses, a CONTAINER, or both")
    _client(ns).call("POST", "/dns/add", {"addresses": addresses, "container": container,
                                          "name": ns.name})
    return 0


def cmd_dns_remove(ns: argparse.Namespace) -> int:
    addresses, container = split_dns_args(ns.args, "dns-remove")
    if not addresses and container is None and ns.name is None:
        raise UsageError("dns-remove: give IP addresses, a CONTAINER or --name")
    _client(ns).call("POST", "/dns/remove", {"addresses": addresses, "container": container,
                                             "name": ns.name})
    return 0


def cmd_dns_lookup(ns: argparse.Namespace) -> int:
    from urllib.parse import quote

    if len(ns.dns_name) > MAX_DNS_NAME_ARG:  # would not even fit the request line
        raise LocalProtocolError(f"NAME is {len(ns.dns_name)} characters long: not a DNS name "
                                 "(at most 253)")
    answer = _client(ns).call("GET", "/dns/lookup?name=" + quote(ns.dns_name, safe=""))
    addresses = answer.get("addresses") if isinstance(answer, dict) else None
    if not addresses:
        name = answer.get("name", ns.dns_name) if isinstance(answer, dict) else ns.dns_name
        raise LocalProtocolError(f"no addresses for {name}")
    for address in addresses:
        print(address)
    return 0


def cmd_rmpeer(ns: argparse.Namespace) -> int:
    if not ns.peer.strip():
        raise UsageError("rmpeer: PEER is empty (a peer name or nickname)")
    answer = _client(ns).call("POST", "/rmpeer", {"peer": ns.peer})
    if not isinstance(answer, dict) or not isinstance(answer.get("taken"), int):
        raise LocalProtocolError("the router's answer to rmpeer is not understood")
    print(f"{answer['taken']} IPs taken over from {answer.get('peer') or ns.peer}")
    return 0


def cmd_expose(ns: argparse.Namespace) -> int:
    answer = _client(ns).call("POST", "/expose", {"addresses": list(ns.args), "name": ns.name},
                              timeout=ATTACH_TIMEOUT)
    for cidr in answer.get("cidrs", []) if isinstance(answer, dict) else []:
        print(cidr)
    return 0


def cmd_hide(ns: argparse.Namespace) -> int:
    answer = _client(ns).call("POST", "/hide", {"addresses": list(ns.args)},
                              timeout=ATTACH_TIMEOUT)
    for cidr in answer.get("removed", []) if isinstance(answer, dict) else []:
        print(cidr)
    return 0


def cmd_label(ns: argparse.Namespace) -> int:
    container, *texts = ns.args
    if not texts and not ns.remove:
        raise UsageError("label: give KEY=VALUE labels to set or --remove KEY")
    answer = _client(ns).call("POST", "/label", {"container": container,
                                                 "labels": parse_labels(texts),
                                                 "remove": list(ns.remove or [])})
    labels = answer.get("labels", {}) if isinstance(answer, dict) else {}
    print(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return 0


def cmd_policy(ns: argparse.Namespace) -> int:
    from weftnet.router.api.render_policy import render_policy_list

    client = _client(ns)
    if ns.action == "list":
        if ns.arg is not None:
            raise UsageError("policy list takes no argument")
        report = client.call("GET", "/report")
        sys.stdout.write(render_policy_list(report.get("policy") if isinstance(report, dict) else None))
        return 0
    if ns.arg is None:
        raise UsageError(f"policy {ns.action} needs {'FILE (or -)' if ns.action == 'apply' else 'NAME'}")
    if ns.action == "delete":
        client.call("POST", "/policy/delete", {"name": ns.arg})
        return 0
    if ns.arg == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text = Path(ns.arg).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise LocalProtocolError(f"cannot read {ns.arg}: {why}") from None
        source = ns.arg
    answer = client.call("POST", "/policy/apply", {"text": text, "source": source})
    for name in answer.get("changed", []) if isinstance(answer, dict) else []:
        print(name)
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    bench_main = _import_attr("weftnet.router.tools.bench", "main", "the benchmark")
    status: int = bench_main(list(ns.args))
    return status


def cmd_version(ns: argparse.Namespace) -> int:
    print(f"{PROG} {weftnet.__version__}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    run_demo = _import_attr("weftnet.router.tools.demo", "run_demo", "the demo")
    status: int = run_demo(list(ns.args))
    return status


def _import_attr(module: str, attr: str, what: str) -> Any:
    """Import lazily (keeps the CLI fast); a missing piece is a one-line error."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise LocalProtocolError(f"{what} is not available in this installation") from None
        raise
    except AttributeError:
        raise LocalProtocolError(f"{what} is not available in this installation") from None


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The launch options are the daemon's (router/daemon/config.py), read only to build
    # the parser: importing this module stays light.
    from weftnet.router.daemon.config import add_launch_arguments

    parser = _Parser(prog=PROG, description="weft: a mesh network for containers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def api_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--http-addr", metavar="ADDR:PORT", help="router API (env WEFT_HTTP_ADDR)")

    p = command("launch", cmd_launch, "start the router for this host")
    add_launch_arguments(p)

    p = command("stop", cmd_stop, "stop the router")
    api_options(p)
    p.add_argument("--data-dir", metavar="DIR", help="wait for this data dir to be released")

    p = command("reset", cmd_reset, "stop the router and remove its state")
    api_options(p)
    p.add_argument("--data-dir", metavar="DIR", help="data dir to remove (env WEFT_DATA_DIR)")

    p = command("connect", cmd_connect, "add connection targets")
    api_options(p)
    p.add_argument("--replace", action="store_true", help="replace all targets with these")
    p.add_argument("peers", nargs="*", metavar="PEER", help="host[:port]")

    p = command("forget", cmd_forget, "remove connection targets")
    api_options(p)
    p.add_argument("peers", nargs="+", metavar="PEER", help="host[:port]")

    p = command("status", cmd_status, "human-readable status")
    api_options(p)
    p.add_argument("view", nargs="?", choices=STATUS_VIEWS, help="one part in detail")

    p = command("report", cmd_report, "the full state as JSON")
    api_options(p)

    p = command("attach", cmd_attach, "connect a container to the network")
    api_options(p)
    p.add_argument("--name", metavar="FQDN", help="DNS name (default: the container's name)")
    p.add_argument("--without-dns", action="store_true", help="no DNS name, no resolver config")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="a label for network policies (repeatable)")
    p.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER",
                   help="ADDR: IP/LEN, net:CIDR or net:default; CONTAINER: a network namespace")

    p = command("detach", cmd_detach, "disconnect a container (or only some addresses)")
    api_options(p)
    p.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER")

    p = command("ps", cmd_ps, "attached containers: CONTAINER MAC CIDR... [LABELS]")
    api_options(p)

    p = command("label", cmd_label, "change a running container's labels (mesh-wide, used by "
                "network policies); print its labels")
    api_options(p)
    p.add_argument("--remove", action="append", metavar="KEY", help="remove this label (repeatable)")
    p.add_argument("args", nargs="+", metavar="CONTAINER [KEY=VALUE...]")

    p = command("policy", cmd_policy, "Kubernetes NetworkPolicy documents, enforced mesh-wide: "
                "apply FILE (YAML or JSON, - for stdin), delete NAME, list")
    api_options(p)
    p.add_argument("action", choices=("apply", "delete", "list"))
    p.add_argument("arg", nargs="?", metavar="FILE|NAME")

    p = command("dns-add", cmd_dns_add, "add DNS records: NAME for each IP (or the "
                "container's addresses); without a CONTAINER, an external record")
    api_options(p)
    p.add_argument("--name", metavar="FQDN", required=True,
                   help="the name (without a dot: in the DNS domain)")
    p.add_argument("args", nargs="*", metavar="[IP...] [CONTAINER]")

    p = command("dns-remove", cmd_dns_remove, "remove DNS records of this router matching "
                "every given IP, CONTAINER and --name")
    api_options(p)
    p.add_argument("--name", metavar="FQDN", help="only records of this name")
    p.add_argument("args", nargs="*", metavar="[IP...] [CONTAINER]")

    p = command("dns-lookup", cmd_dns_lookup, "the addresses of a name, one per line")
    api_options(p)
    p.add_argument("dns_name", metavar="NAME")

    p = command("rmpeer", cmd_rmpeer, "take over the IPAM space of a dead peer")
    api_options(p)
    p.add_argument("peer", metavar="PEER", help="peer name or nickname")

    p = command("expose", cmd_expose, "give this host an address on the network (with "
                "masquerading for containers' traffic out); print its CIDR(s)")
    api_options(p)
    p.add_argument("--name", metavar="FQDN", help="a DNS name for the host's address(es)")
    p.add_argument("args", nargs="*", metavar="ADDR",
                   help="IP/LEN, net:CIDR or net:default (default: one from the default subnet)")

    p = command("hide", cmd_hide, "take exposed addresses away (all when none given); "
                "print those removed")
    api_options(p)
    p.add_argument("args", nargs="*", metavar="ADDR", help="IP/LEN, IP, net:CIDR or net:default")

    command("version", cmd_version, "print the version")

    # The benchmark parses its own arguments too.
    sub.add_parser(
        "bench", help="measure the data paths side by side", add_help=False
    ).set_defaults(handler=cmd_bench, args=[])

    # The demo parses its own arguments (all of them, --help included): see _run.
    sub.add_parser(
        "demo", help="the one-machine tour in network namespaces", add_help=False
    ).set_defaults(handler=cmd_demo, args=[])
    return parser


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    handler: Callable[[argparse.Namespace], int] | None = getattr(ns, "handler", None)
    if extra:
        if handler in (cmd_attach, cmd_detach, cmd_dns_add, cmd_dns_remove,
                       cmd_expose, cmd_label) and not any(
                word.startswith("-") for word in extra):
            # positionals after an option (`attach 10.2.1.1/24 --name c1 NS`): argparse
            # leaves them over; they are more of the same list
            ns.args = list(ns.args) + extra
        elif handler not in (cmd_demo, cmd_bench):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        else:
            ns.args = extra
    if handler is None:
        raise UsageError(f"no command given (see '{PROG} --help')")
    name = getattr(ns, "name", None)
    if handler is not cmd_launch and isinstance(name, str) and not name.strip():
        raise UsageError(f"{ns.command}: --name is empty")
    return handler(ns)


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``weft``; returns the exit status, never raises (but SystemExit
    from ``--help``, turned into its status)."""
    try:
        return _run(argv)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (LocalProtocolError, NotRunning, Interrupted) as exc:
        return _fail(exc.reason, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except SystemExit as exc:  # argparse --help, or a command that exits
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        return _fail(str(code), 1)
    except BrokenPipeError:
        # `weft report | head`: the reader left; nothing more to say.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence flush at exit
        except OSError:
            pass
        return 1
    except Exception as exc:
        if os.environ.get("WEFT_DEBUG"):
            traceback.print_exc()
        return _fail(f"internal error: {type(exc).__name__}: {exc}", 2)


if __name__ == "__main__":
    sys.exit(main())
