"""The `municipal-gateway` command.

Exit codes: 0 success, 1 a runtime failure (device unreachable for `read`,
gateway part failed), 2 invalid configuration or usage. Configuration errors
are printed one per line, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from drivers.registry import ProtocolUnavailable
from gateway import __version__
from gateway.config.errors import ConfigError, suggest
from gateway.config.loader import GatewayConfig, load_config, load_main_catalogue
from gateway.logs import setup_logging
from gateway.memory import one_malloc_arena
from gateway.model.devices import DeviceBase
from gateway.model.resolved import ResolvedDevice
from gateway.statedir import StateDirInUse

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("municipal-gateway")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away is noticed here, not in an error at exit
    except BrokenPipeError:
        # The reader went away (`... | head`): what it wanted it has; say nothing more, not even at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage error: flushed under main's watch
        sys.stdout.flush()
        return done.code if isinstance(done.code, int) else EXIT_CONFIG
    setup_logging(args.log_level)
    command: Callable[[argparse.Namespace], int] = args.command
    os.umask(os.umask(0o077) | 0o077)  # whatever the caller's umask: what we create is ours alone
    try:
        return command(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    except StateDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG  # like a configuration error: restarting cannot help (systemd does not retry 2)
    except ProtocolUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


# -- commands ----------------------------------------------------------------------------------------------

# The gateway ids of the shipped example configurations (not the demo's, which runs on its own broker): two
# boxes with one client id throw each other off the broker, each reconnect taking the other's session.
EXAMPLE_IDS = frozenset({"gw-north-01", "gas-north-gw1", "gw-serial-example", "gw-change-me", "ps02-gw"})


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_files=True, as_service=True)
    from gateway.app import links
    from gateway.config.listener import check_status_listener

    client_id = config.main.mqtt.client_id or config.main.gateway.id
    if client_id in EXAMPLE_IDS:
        print(f"warning: {args.config}: the MQTT client id {client_id!r} is a shipped example's; every box needs "
              "its own (gateway.id, or mqtt.client_id), or gateways that share it throw each other off the "
              "broker", file=sys.stderr)

    # What only trying shows (the status listener's address, its password file), located like the rest.
    issues = check_status_listener(config)
    if issues:
        raise ConfigError(issues)
    points = sum(len(d.points) for d in config.devices)
    for note in config.notes:
        print(f"note: {note}")
    overlays = len(config.catalogue.sources) - 1
    print(f"{args.config}: valid — {len(config.devices)} devices on {len(links(config.devices))} links, "
          f"{points} points, {len(config.catalogue.indicators)} indicators in the catalogue"
          + (f" ({overlays} overlay{'s' if overlays != 1 else ''})" if overlays > 0 else ""))
    return EXIT_OK


def cmd_catalogue(args: argparse.Namespace) -> int:
    from gateway.catalogue_view import describe_indicator, list_catalogue

    catalogue, notes = load_main_catalogue(args.config)
    if args.indicator is None:
        for line in list_catalogue(catalogue):
            print(line)
        for note in notes:
            print(f"note: {note}")
        return EXIT_OK
    lines = describe_indicator(catalogue, args.indicator)
    if lines is None:
        known = [i.id for i in catalogue.indicators]
        print(f"error: unknown indicator {args.indicator!r}; expected an indicator id of the catalogue"
              + suggest(args.indicator, known), file=sys.stderr)
        return EXIT_CONFIG
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from drivers.registry import make_driver
    from gateway.app import links

    # With the state directory, what the devices taught (learnt splits and limits) is shown too; reading
    # it never writes there.
    context = config.link_context
    for link, devices in links(config.devices).items():
        driver = make_driver(devices, context)
        print(f"link {link}")
        for device in devices:
            lines = driver.describe(device)
            requests = [line for line in lines if not line.startswith(_LESSONS)]
            print(f"  device {device.id} ({len(device.points)} points, {len(requests)} requests per poll)")
            for line in requests:
                print(f"    {line}")
            for line in lines[len(requests):]:
                print(f"      {line}")
    return EXIT_OK


# Lines of `describe` that say what a device taught the driver rather than name a request.
_LESSONS = ("learned:", "unreadable:")


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import json_schema

    print(json.dumps(json_schema(args.kind), indent=2, ensure_ascii=False))
    return EXIT_OK


def _named_device(config: GatewayConfig, args: argparse.Namespace) -> ResolvedDevice[DeviceBase] | None:
    """The device the command line names; None (said, with the nearest id) when the configuration has none."""
    device = config.device(args.device)
    if device is None:
        print(f"error: no device {args.device!r} in {args.config}"
              + suggest(args.device, [d.id for d in config.devices]), file=sys.stderr)
    return device


def cmd_read(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    device = _named_device(config, args)
    if device is None:
        return EXIT_CONFIG
    from gateway.readonce import read_once
    from gateway.statedir import StateLock

    # A running gateway owns the devices' links (a serial port, a PLC that takes one connection).
    with StateLock(config.state_dir):
        return asyncio.run(read_once(config, device))


def cmd_write(args: argparse.Namespace) -> int:
    """One command from the engineer on site: the same checks, audit and read-back as from the control room."""
    config = load_config(args.config)
    device = _named_device(config, args)
    if device is None:
        return EXIT_CONFIG
    from gateway.statedir import StateLock
    from gateway.writeonce import parse_value, preview, write_once

    value = parse_value(args.value)
    print(preview(device, args.point, value))
    if not args.yes:
        if not sys.stdin.isatty():
            print("error: not confirmed; give --yes to write without asking", file=sys.stderr)
            return EXIT_CONFIG
        if input("write it? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not written")
            return EXIT_OK
    import uuid

    with StateLock(config.state_dir):  # a running gateway owns the links: send commands to it on its topic
        result = asyncio.run(write_once(config, device, args.point, value, f"cli-{uuid.uuid4()}"))
    status = result.get("status")
    detail = result.get("confirmation") if status == "done" else f"{result.get('reason')}: {result.get('message')}"
    back = f", read back {json.dumps(result['read_back'])}" if "read_back" in result else ""
    print(f"{status}: {detail}{back} (command {result.get('id')}, in the audit log)")
    if status == "done" and result.get("confirmation") == "confirmed":
        return EXIT_OK
    return EXIT_CONFIG if status == "refused" else EXIT_FAILURE


def cmd_audit(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from gateway.commands.audit import AUDIT_FILE, iter_lines, read_audit

    rows = read_audit(config.state_dir / AUDIT_FILE, args.limit)  # read-only: safe beside a running gateway
    if args.json:
        for row in rows:
            print(json.dumps({"seq": row.seq, "ts": row.ts_ms, "kind": row.kind, **row.entry}, ensure_ascii=False))
    else:
        for line in iter_lines(rows):
            print(line)
    if not rows:
        print(f"no commands in the audit log ({config.state_dir / AUDIT_FILE})", file=sys.stderr)
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    """The switching times of the coming 24 hours of every lighting circuit, in the site's time zone."""
    config = load_config(args.config)
    if not config.main.lighting.circuits:
        print(f"no lighting circuits in {args.config}")
        return EXIT_OK
    from gateway.lighting import schedules, tonight
    from gateway.model.readings import now_ms

    start = now_ms()
    if args.at is not None:
        import datetime

        try:
            moment = datetime.datetime.fromisoformat(args.at)
        except ValueError:
            print(f"error: --at {args.at!r} is not an ISO date and time (2026-12-01T12:00)", file=sys.stderr)
            return EXIT_CONFIG
        if moment.tzinfo is None:
            import zoneinfo

            assert config.main.site is not None
            moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(config.main.site.timezone))
        start = int(moment.timestamp() * 1000)
    for line in tonight(schedules(config.main.lighting, config.main.site, config.devices), start):
        print(line)
    return EXIT_OK


def cmd_buffer(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from gateway.buffer import read_stats
    from gateway.model.readings import format_time_ms
    from gateway.state import read_registry

    if not config.buffer_path.exists():
        print(f"no buffer yet at {config.buffer_path} (the gateway has not run with this configuration)")
        return EXIT_OK
    from gateway.statedir import holder

    stats = read_stats(config.buffer_path)  # read-only: safe beside a running gateway
    oldest = format_time_ms(stats.oldest_created_ms) if stats.oldest_created_ms else "-"
    running = holder(config.state_dir)
    print(f"buffer {config.buffer_path}" + (f" (gateway running: process {running})" if running else ""))
    print(f"  waiting:  {stats.messages} messages, {stats.readings} readings, {stats.bytes} bytes "
          f"(cap {config.main.buffer.max_bytes})")
    print(f"  oldest:   {oldest}")
    print(f"  dropped:  {stats.dropped_messages} messages, {stats.dropped_readings} readings (size cap and full disk)")
    print(f"  last seq: {stats.last_seq}")
    for status in read_registry(config.state_dir / "devices.json"):
        print(f"  device {status['device']}: {status['state']} since {format_time_ms(status['since'])}"
              + (f" ({status['reason']}: {status['message']})" if status.get("reason") else ""))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    one_malloc_arena()  # before the first thread
    config = load_config(args.config, check_files=True)
    if args.log_level is None:
        logging.getLogger().setLevel(config.main.gateway.log_level.value.upper())
    return asyncio.run(_run(config))


async def _run(config: GatewayConfig) -> int:
    from gateway.app import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second signal: the operator does not want to wait for a clean stop
            log.warning("second signal: exiting now, without waiting for the clean stop")
            os._exit(EXIT_FAILURE)  # even past a stop stuck in a thread (a disk sync, the MQTT thread)
        log.info("stopping (signal received)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    from gateway.commands.service import CommandSetupError

    try:
        await Gateway(config).run(stop)
    except CommandSetupError as exc:  # a missing command secret: says which, never what it is
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except StateDirInUse as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot run: %s", exc)
        return EXIT_FAILURE
    except sqlite3.Error as exc:
        log.error("the buffer %s cannot be used: %s. If the file is damaged, move it aside (its unsent "
                  "readings are then not sent) and start again.", config.buffer_path, exc)
        return EXIT_FAILURE
    except Exception as exc:
        for failure in _leaves(exc):
            log.error("the gateway stopped: %r", failure, exc_info=failure)
        return EXIT_FAILURE
    return EXIT_OK


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def cmd_browse(args: argparse.Namespace) -> int:
    """Print a YAML device skeleton of an OPC-UA server's variables."""
    from drivers.opcua.browse import browse, endpoint_of, start_node
    from drivers.opcua.client import ConnectOptions, OpcUaError
    from drivers.opcua.config import SecurityMode, SecurityPolicy

    try:
        endpoint = endpoint_of(args.endpoint)
        start_node(args.node)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        password, credential = _browse_password(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    options = ConnectOptions(
        endpoint=endpoint, timeout=args.timeout, keepalive=5.0, session_timeout=60.0,
        policy=SecurityPolicy(args.policy), mode=SecurityMode(args.mode), certificate=args.cert,
        private_key=args.key, application_uri=args.application_uri, server_certificate=args.server_cert,
        trust_dir=args.trust_dir, username=args.username, password=password, pki_dir=args.state_dir / "opcua")
    try:
        print(asyncio.run(browse(options, args.node, args.depth, args.id, credential)), end="")
    except OpcUaError as exc:
        print(f"error: {exc} ({exc.reason})", file=sys.stderr)
        return EXIT_CONFIG if exc.reason in _BAD_NODE else EXIT_FAILURE
    return EXIT_OK


class _UsageError(Exception):
    """An option that cannot be used as given."""


# Status names that say the --node given is wrong (a usage error), not that the server failed.
_BAD_NODE = {"BadNodeIdUnknown", "BadNodeIdInvalid"}


def _browse_password(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The password to connect with, and the line naming where it comes from (never the secret itself)."""
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise _UsageError(f"cannot read --password-file {args.password_file}: {exc.strerror}") from exc
        return password, f"password_file: {json.dumps(str(args.password_file.absolute()))}"
    if args.password_env:
        return os.environ.get(args.password_env), f"password: ${{{args.password_env}}}"
    return None, None


def cmd_scan(args: argparse.Namespace) -> int:
    from drivers.registry import protocols
    from drivers.serial.config import Parity, SerialSettings
    from drivers.serial.scan import ScanOptions, default_reply_timeout, default_silence, scan_command

    settings = SerialSettings(baud=args.baud, parity=Parity(args.parity), data_bits=args.data_bits,
                              stop_bits=args.stop_bits)
    probes = [protocol.load(protocol.probe) for protocol in protocols().values() if protocol.probe is not None]
    timeout = args.timeout if args.timeout is not None else default_reply_timeout(settings)
    silence = args.silence if args.silence is not None else default_silence(settings)
    options = ScanOptions(timeout, range(args.first_unit, args.last_unit + 1), silence)
    return scan_command(args.port, settings, probes, options)


def cmd_watch(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from gateway.status.watch import StatusReader, View, WatchError, print_once, run_interactive

    settings = config.main.status
    if not settings.enabled:
        print(f"error: {args.config}: the status listener is off, and watch reads it; set status.enabled: true "
              "(it listens on 127.0.0.1 only unless status.host says otherwise) and restart the gateway",
              file=sys.stderr)
        return EXIT_CONFIG
    view = View(assets=args.asset or (), indicators=args.indicator or ())
    try:
        reader = StatusReader.for_settings(settings)
        if args.once or not sys.stdout.isatty():
            import shutil

            print_once(reader, view, shutil.get_terminal_size((80, 24)).columns)
        else:
            reader.fetch()  # nothing answers: say so plainly, before the screen is taken over
            run_interactive(reader, view, settings.refresh if args.refresh is None else args.refresh)
    except WatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


# -- plumbing ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="municipal-gateway",
                                     description="IoT edge gateway for city infrastructure.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None,
                        help="overrides gateway.log_level")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str,
                config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(command=handler)
        if config:
            sub.add_argument("config", type=Path, help="the main configuration file")
        return sub

    command("run", cmd_run, "run the gateway")
    command("check", cmd_check, "validate the configuration; exit 0 when valid, 2 when not")
    command("plan", cmd_plan, "print the requests each device's poll makes")
    catalogue = command("catalogue", cmd_catalogue, "list the resolved catalogue (the shipped file and its overlays): "
                        "each indicator's id, names, unit, kind, range and the file that defined it")
    catalogue.add_argument("--indicator", metavar="ID", help="show one indicator in full")
    schema = command("schema", cmd_schema, "print the JSON Schema of the configuration files", config=False)
    schema.add_argument("--kind", choices=["main", "devices", "profile", "catalogue"], default="main")
    read = command("read", cmd_read, "poll one device once and print its readings (no MQTT needed)")
    read.add_argument("device", help="device id")
    command("buffer", cmd_buffer, "show the local buffer: depth, oldest reading, dropped count")
    write = command("write", cmd_write, "write one value to a writable point with the command checks, audited "
                    "(while the gateway is not running; it owns the links when it is)")
    write.add_argument("device", help="device id")
    write.add_argument("point", help="point name")
    write.add_argument("value", help="a number (in the indicator's unit), true/false, or text")
    write.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    schedule = command("schedule", cmd_schedule, "print the lighting circuits' switching times of the coming 24 hours")
    schedule.add_argument("--at", help="from this local time instead of now (2026-12-01T12:00)")
    audit = command("audit", cmd_audit, "print the audit log of commands and their results")
    audit.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    browse = command("browse", cmd_browse, "print a YAML skeleton of an OPC-UA server's variables, "
                     "ready to map onto indicators", config=False)
    browse.add_argument("endpoint", help="opc.tcp://host:port[/path], or host:port")
    browse.add_argument("--node", help="start here instead of the Objects folder (nsu=<uri>;s=<id>)")
    browse.add_argument("--depth", type=int, default=4, help="levels to descend (default 4)")
    browse.add_argument("--id", default="opcua-device", help="device id to put in the skeleton")
    browse.add_argument("--policy", default="None", choices=["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep",
                                                             "Aes256_Sha256_RsaPss"])
    browse.add_argument("--mode", default="None", choices=["None", "Sign", "SignAndEncrypt"])
    browse.add_argument("--server-cert", type=Path, help="the server certificate to trust")
    browse.add_argument("--trust-dir", type=Path, help="directory of trusted server certificates")
    browse.add_argument("--cert", type=Path, help="client certificate (default: generated in the state directory)")
    browse.add_argument("--key", type=Path, help="client private key")
    browse.add_argument("--application-uri", help="application URI of the client certificate")
    browse.add_argument("--username")
    browse.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    browse.add_argument("--password-file", type=Path)
    browse.add_argument("--state-dir", type=Path, default=Path("/var/lib/municipal-gateway"),
                        help="where the generated client certificate lives, and rejected server certificates go")
    browse.add_argument("--timeout", type=float, default=5.0)
    scan = command("scan", cmd_scan, "probe a serial bus for Modbus RTU units and lone CJ/T 188 / DL/T 645 meters",
                   config=False)
    scan.add_argument("port", help="serial device, e.g. /dev/ttyUSB0")
    scan.add_argument("--baud", type=int, default=9600)
    scan.add_argument("--parity", choices=["none", "even", "odd"], default="even")
    scan.add_argument("--data-bits", type=int, choices=[7, 8], default=8)
    scan.add_argument("--stop-bits", type=float, choices=[1, 1.5, 2], default=1)
    scan.add_argument("--timeout", type=float, default=None,
                      help="seconds to wait for each address (default: what the line needs, at least 0.5)")
    scan.add_argument("--silence", type=float, default=None,
                      help="seconds of silence between protocols (default: at least 0.5)")
    scan.add_argument("--first-unit", type=int, default=1, choices=range(1, 248), metavar="1-247")
    scan.add_argument("--last-unit", type=int, default=247, choices=range(1, 248), metavar="1-247")
    watch = command("watch", cmd_watch, "show the running gateway's live values, read from its status listener "
                    "on this box (scroll with the arrows, / to filter, q to quit)")
    watch.add_argument("--asset", action="append", metavar="TEXT",
                       help="only assets whose domain/site/asset contains TEXT (repeatable)")
    watch.add_argument("--indicator", action="append", metavar="TEXT",
                       help="only indicators whose id contains TEXT (repeatable)")
    watch.add_argument("--once", action="store_true", help="print every row once and end (also when piped)")
    watch.add_argument("--refresh", type=float, default=None, help="seconds between updates (default status.refresh)")
    demo = command("demo", cmd_demo, "run simulated devices, a broker and the gateway, and show what arrives",
                   config=False)
    demo.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--plain", action="store_true", help="print messages line by line instead of a live view")
    demo.add_argument("--embedded-broker", action="store_true",
                      help="use the embedded Python broker even when mosquitto is installed")
    return parser


def _print_config_error(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(f"error: {issue}", file=sys.stderr)
    count = len(exc.issues)
    print(f"{count} configuration problem{'s' if count != 1 else ''} found", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
