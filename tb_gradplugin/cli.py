"""The ``tb-gradhealth`` command: pathology flags of the runs under a log directory.

Usage::

    tb-gradhealth check LOGDIR [--json] [--fail-on {error,warning,never}]

It reads the event files through TensorBoard's Rust data server (the
``tensorboard-data-server`` package, as ``tensorboard --load_fast=true`` does),
or with TensorBoard's slower Python loader when no server is available (one
line on standard error says so); no TensorFlow. It runs
:func:`tb_gradplugin.diagnosis.run_report` on every run that holds
gradient-health data and prints the flags, for a person or (``--json``) as one
JSON object on standard output. Exit status: ``0`` when no flag is at or above
``--fail-on``, ``1`` when one is, ``2`` on a usage or input error (one line on
standard error). A corrupt or half-written event file gives a warning on
standard error; the data read before the damage is still used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import types
from collections.abc import Sequence
from typing import Any, TextIO

PROG = "tb-gradhealth"
_FAIL_ON = ("error", "warning", "never")
_READ_ERROR = "Read error in "
_USING_BEFORE = "using the events before that point"


class _UsageError(Exception):
    """A command-line mistake, reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # noqa: D102 - argparse's hook
        raise _UsageError(f"{message} (see '{PROG} --help')")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Gradient Health for TensorBoard: check runs for pathologies.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    check = commands.add_parser(
        "check",
        help="print the pathology flags of every run under LOGDIR",
        description=(
            "Prints the pathology flags (NaN/Inf, exploding or vanishing "
            "gradients, oscillating or stuck loss, dead layers, saddle points) of "
            "every gradient-health run under LOGDIR. Exit status 0 when no flag "
            "is at or above --fail-on, 1 when one is, 2 on an input error."
        ),
    )
    check.add_argument("logdir", metavar="LOGDIR", help="the TensorBoard log directory")
    check.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object {"runs": [...]} on standard output',
    )
    check.add_argument(
        "--fail-on",
        choices=_FAIL_ON,
        default="error",
        help="exit 1 when a flag has this severity or a worse one (default: error)",
    )
    return parser


def _use_tensorboard_stub() -> None:
    """Makes TensorBoard read event files with its TF-free stub.

    TensorBoard resolves ``tensorboard.compat.tf`` lazily to TensorFlow when
    it is installed; importing TensorFlow costs seconds and prints log lines on
    standard error. This process only reads local event files, which the stub
    does; the marker module ``tensorboard.compat.notf`` selects it.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault(
            "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf")
        )


class _LoadWarnings(logging.Handler):
    """Collects what TensorBoard's loader says about damaged event files."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log record must not stop us
            return
        if msg.startswith("Truncated record in "):
            # "Truncated record in PATH (REASON)": the loader stops at the bad
            # record and keeps what came before it.
            path, _, reason = msg[len("Truncated record in ") :].partition(" (")
            reason = reason.rstrip(")")
            if "truncated record" in reason:
                why = "ends with a partial record (still being written, or cut off)"
            else:
                why = "is corrupt (failed CRC check)"
            line = f"event file {path} {why}; {_USING_BEFORE}"
        elif record.levelno >= logging.WARNING:
            line = msg.splitlines()[0] if msg else record.levelname
        else:
            return
        if line not in self.lines:
            self.lines.append(line)


def _clean(text: Any) -> str:
    """Makes a name safe to print (the diagnosis package's one rule for it)."""
    from tb_gradplugin.diagnosis import flags

    return flags.printable(text)


def _read_reports(logdir: str, err: TextIO) -> list[dict[str, Any]]:
    """Reads and diagnoses every run; raises _UsageError on input errors."""
    if not os.path.exists(logdir):
        raise _UsageError(f"log directory not found: {_clean(logdir)}")
    if not os.path.isdir(logdir):
        raise _UsageError(f"not a directory: {_clean(logdir)}")
    from tensorboard.data import server_ingester

    from tb_gradplugin import data_server, flag_reads, reader

    try:
        with contextlib.ExitStack() as stack:
            try:
                server_log: list[str] = []
                provider = stack.enter_context(
                    data_server.data_server_provider(logdir, log_lines=server_log)
                )
                warnings = _server_warnings(logdir, server_log)
            except (server_ingester.NoDataServerError, OSError) as e:
                # No server binary for this platform, or it would not start:
                # the Python loader reads the same files, only slower.
                print(
                    f"{PROG}: warning: TensorBoard's Rust data server is "
                    f"unavailable ({_clean(str(e).rstrip('.'))}); reading with "
                    "its slower Python loader",
                    file=err,
                )
                provider, warnings = _python_provider(logdir)
            runs = reader.list_runs(provider)
            reports, failures = [], []
            for run in runs:
                try:
                    reports.append(flag_reads.run_report(provider, run))
                except OSError:
                    raise
                except Exception as e:  # noqa: BLE001 - one bad run must not hide others
                    failures.append(
                        f"could not diagnose run {_clean(run)}: "
                        f"{type(e).__name__}: {_clean(e)}"
                    )
    except OSError as e:
        raise _UsageError(f"cannot read {_clean(logdir)}: {_clean(e)}") from e
    for line in warnings:
        print(f"{PROG}: warning: {_clean(line)}", file=err)
    if not runs:
        raise _UsageError(
            f"no gradient-health runs under {_clean(logdir)} (no event files "
            "written by GradientHealthCallback were found)"
        )
    for line in failures:
        print(f"{PROG}: warning: {line}", file=err)
    if not reports:
        raise _UsageError(f"no run under {_clean(logdir)} could be diagnosed")
    return reports


def _server_warnings(logdir: str, server_log: list[str]) -> list[str]:
    """The data server's warnings, and the event files that end mid-record.

    The server logs a corrupt record (``WARN ... Read error in PATH: WHY``) but
    waits silently at a partial one, so those are found from the files.
    """
    from tb_gradplugin import event_files

    paths = list(event_files.event_file_paths(logdir))
    lines: list[str] = []
    for entry in server_log:
        if " WARN " not in entry and " ERROR " not in entry:
            continue
        text = entry.strip().partition("] ")[2] or entry.strip()
        if text.startswith(_READ_ERROR):
            where = text[len(_READ_ERROR) :]
            path = next((p for p in paths if where.startswith(p + ": ")), None)
            if path is not None:
                why = "failed CRC check" if "Crc" in where else "unreadable record"
                text = f"event file {path} is corrupt ({why}); {_USING_BEFORE}"
        if text not in lines:
            lines.append(text)
    for path in paths:
        try:
            partial = event_files.ends_with_partial_record(path)
        except OSError:
            continue  # a file removed during the read has no tail to check
        if partial:
            lines.append(
                f"event file {path} ends with a partial record (still being "
                f"written, or cut off); {_USING_BEFORE}"
            )
    return lines


def _python_provider(logdir: str) -> tuple[Any, list[str]]:
    """Loads the log directory with TensorBoard's Python loader; keeps its warnings."""
    from tensorboard.util import tb_logging

    from tb_gradplugin import reader

    tb_logger = tb_logging.get_logger()
    handler = _LoadWarnings()
    saved = (tb_logger.level, tb_logger.propagate)
    tb_logger.addHandler(handler)
    tb_logger.setLevel(logging.DEBUG)
    tb_logger.propagate = False
    try:
        provider = reader.provider_for_logdir(logdir)
    finally:
        tb_logger.removeHandler(handler)
        tb_logger.setLevel(saved[0])
        tb_logger.propagate = saved[1]
    return provider, handler.lines


def _worst(reports: list[dict[str, Any]]) -> int:
    from tb_gradplugin.diagnosis import severity_rank

    ranks = [severity_rank(f["severity"]) for r in reports for f in r["flags"]]
    return max(ranks, default=-1)


def _print_text(reports: list[dict[str, Any]], out: TextIO) -> None:
    from tb_gradplugin.diagnosis import format_flag

    counts = {"error": 0, "warning": 0, "info": 0}
    for report in reports:
        flags = report["flags"]
        last = report["last_step"]
        head = f"{_clean(report['run'])} (last step {last})"
        if not flags:
            print(f"{head}: healthy, no flags", file=out)
            continue
        print(f"{head}: {len(flags)} flag(s)", file=out)
        for f in flags:
            counts[f["severity"]] = counts.get(f["severity"], 0) + 1
            print(format_flag(f, indent="  "), file=out)
    print(
        f"{len(reports)} run(s): {counts['error']} error(s), "
        f"{counts['warning']} warning(s), {counts['info']} info.",
        file=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``tb-gradhealth``.

    Args:
        argv: The arguments after the program name. Defaults to ``None``:
            ``sys.argv[1:]``.

    Returns:
        The exit status: 0 when no flag is at or above ``--fail-on``, 1 when
        one is, 2 on a usage or input error.
    """
    out, err = sys.stdout, sys.stderr
    # Before anything imports TensorBoard's loading code (the diagnosis
    # package does, through the reader).
    _use_tensorboard_stub()
    try:
        args = _build_parser().parse_args(argv)
        reports = _read_reports(args.logdir, err)
        if args.fail_on == "never":
            status = 0
        else:
            from tb_gradplugin.diagnosis import severity_rank

            status = 1 if _worst(reports) >= severity_rank(args.fail_on) else 0
        if args.json:
            text = json.dumps({"runs": reports}, allow_nan=False)
            out.write(text + "\n")
        else:
            _print_text(reports, out)
        out.flush()
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=err)
        return 2
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`); nothing to report.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return status
    except Exception as e:  # noqa: BLE001 - no traceback for the user
        print(f"{PROG}: error: {type(e).__name__}: {_clean(e)}", file=err)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
