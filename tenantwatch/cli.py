"""Command line: tenantwatch run|doctor|check-config|top|status|demo|release-caps|version.

Exit codes: 0 ok; 1 runtime failure (probes could not attach: see `doctor`);
2 usage; 77 missing privileges (EX_NOPERM); 78 bad configuration (EX_CONFIG); the unit's
RestartPreventExitStatus= names both;
`status`: 0 running, 3 not running, 4 unknown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

from tenantwatch import __version__
from tenantwatch.errors import ConfigError, KernelSupportError, PermissionProblem, TenantwatchError
from tenantwatch.logs import LOG_FORMATS, setup_logging

EX_CONFIG = 78
EX_NOPERM = 77  # sysexits.h: missing privileges (root, CAP_BPF): not restarted by the unit
log = logging.getLogger("tenantwatch")


def _load(args: argparse.Namespace):
    from tenantwatch.config import load_config

    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as e:
        setup_logging(args.log_format or "text", "info")
        log.error("bad configuration: %s", e)
        return EX_CONFIG
    setup_logging(args.log_format or config.log_format, config.log_level)
    from tenantwatch.config import advisories
    from tenantwatch.daemon import Daemon

    for advice in advisories(config):
        log.warning("configuration: %s", advice)

    try:
        daemon = Daemon(config, config_path=args.config or os.environ.get("TENANTWATCH_CONFIG"))
    except ConfigError as e:  # a file the config names (web_config_file) is bad
        log.error("bad configuration: %s", e)
        return EX_CONFIG
    if args.print_bpf:
        print(daemon.probes.print_bpf())
        return 0
    try:
        return daemon.run()
    except PermissionProblem as e:  # not root, no CAP_BPF: a restart cannot help
        log.error("%s", e)
        return EX_NOPERM
    except KernelSupportError as e:
        log.error("%s", e)
        return 1
    except TenantwatchError as e:
        log.error("%s", e)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
        if config.web_config_file:
            from tenantwatch.exporters.web_config import load_web_config

            load_web_config(config.web_config_file)
    except ConfigError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return EX_CONFIG
    srcs = ", ".join(
        f"{s.kind}:{s.host_template or s.header}"
        f"{'/' + s.side.value if s.side else ''}{' (trusted)' if s.trusted else ''}"
        for s in config.tenancy.sources)
    print(f"ok: listen {config.listen}; targets {', '.join(t.process for t in config.targets)}; "
          f"sources {srcs}; max_tenants {config.tenancy.max_tenants}; "
          f"enforcement {config.enforcement.mode}")
    from tenantwatch.config import advisories

    for advice in advisories(config):
        print(f"warning: {advice}", file=sys.stderr)
    return 0


def _base_url(args: argparse.Namespace) -> str:
    from tenantwatch.config import DEFAULT_LISTEN, ENV_LISTEN
    from tenantwatch.top import normalize_base_url

    if args.url:
        return normalize_base_url(args.url)
    try:
        return normalize_base_url(_load(args).listen)
    except ConfigError:
        return normalize_base_url(os.environ.get(ENV_LISTEN, DEFAULT_LISTEN))


def cmd_top(args: argparse.Namespace) -> int:
    from tenantwatch.top import run_top

    return run_top(_base_url(args), interval=args.interval, once=args.once)


def cmd_status(args: argparse.Namespace) -> int:
    from tenantwatch.top import run_status

    return run_status(_base_url(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from tenantwatch.doctor import run_doctor

    return run_doctor()


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("text", "warning")
    from tenantwatch.demo.run import run_demo

    return run_demo(duration=args.duration)


def cmd_release_caps(args: argparse.Namespace) -> int:
    """Restore every CPU cap recorded in the state file (for ExecStopPost= after a crash)."""
    from tenantwatch.config import DEFAULT_CGROUP, Enforcement
    from tenantwatch.enforcement import release_all

    setup_logging(args.log_format or "text", "info")
    try:
        e = _load(args).enforcement
    except ConfigError as err:  # a broken config must not leave caps behind
        log.warning("release-caps: %s; using the default state file and root", err)
        e = Enforcement("off", DEFAULT_CGROUP)
    if e.keep_on_exit and os.environ.get("SERVICE_RESULT") == "success" and not args.force:
        print(json.dumps({"kept": True}))
        return 0  # kept on purpose; the next start adopts or restores them
    r = release_all(args.state_file or e.state_file, args.root or e.root)
    print(json.dumps({"restored": r.restored, "gone": r.gone, "replaced": r.replaced,
                      "failed": dict(r.failed), "error": r.error}))
    return r.exit_code  # 0: nothing of ours left in force; 1: something is


def cmd_version(args: argparse.Namespace) -> int:
    print(f"tenantwatch {__version__} (kernel {platform.release()}, python "
          f"{platform.python_version()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantwatch", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tenantwatch {__version__}")
    p.add_argument("--config", help="config file [$TENANTWATCH_CONFIG or "
                   "/etc/tenantwatch/tenantwatch.yaml]")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=None)
    # The same options after the subcommand (`tenantwatch run --config FILE`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS)
    common.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw):
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    r = sub.add_parser("run", help="run the daemon in the foreground")
    r.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)
    sub.add_parser("doctor", help="what this machine supports, and how to fix what it lacks"
                   ).set_defaults(func=cmd_doctor)
    sub.add_parser("check-config", help="validate the config and exit (78 when invalid)"
                   ).set_defaults(func=cmd_check_config)
    t = sub.add_parser("top", help="live per-tenant table from a running daemon")
    t.add_argument("--url", help="daemon base URL [from the config's listen]")
    t.add_argument("--interval", type=float, default=1.0)
    t.add_argument("--once", action="store_true", help="print one table and exit")
    t.set_defaults(func=cmd_top)
    s = sub.add_parser("status", help="is the daemon running? (0 yes, 3 no, 4 unknown)")
    s.add_argument("--url", help="daemon base URL [from the config's listen]")
    s.set_defaults(func=cmd_status)
    d = sub.add_parser("demo", help="local nginx gateway + tenants + tenantwatch, until Ctrl-C")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.set_defaults(func=cmd_demo)
    rc = sub.add_parser("release-caps", help="restore every CPU cap tenantwatch recorded "
                        "(independent of the daemon; for ExecStopPost=)")
    rc.add_argument("--state-file", help="[enforcement.state_file]")
    rc.add_argument("--root", help="[enforcement.root]")
    rc.add_argument("--force", action="store_true", help="also when keep_on_exit is set")
    rc.set_defaults(func=cmd_release_caps)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
