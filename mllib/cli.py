"""Flags and error handling shared by every script (datasets/, networks/, segment/)."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import Callable

from mllib import EXTRAS, VERSION, MissingExtra, MllibError, UsageError  # noqa: F401 - cli.UsageError for commands
from mllib.checks import Range

log = logging.getLogger(__name__)


def http_url(text: str) -> str:
    """An argparse type: an http:// or https:// URL with a host (a site or mirror to download from)."""
    from urllib.parse import urlsplit

    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL (got {text!r})")
    return text


def log_level(text: str) -> str:
    """An argparse type: a logging level name (debug, info, warning, error, critical), any case."""
    if str(text).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"must be one of debug, info, warning, error, critical (got {text!r})")
    return str(text).upper()


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the module docstring's example layout and shows one default per flag: none for a switch, for
    a flag whose default is unset (None) or for a help text that already says its default; the seed's single-dash
    spellings (-store, -trainingset_name) and older names (--savedmodelname for --model_name) are accepted but only the
    flag's one name is listed."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.nargs == 0 or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        return text + " (default: %(default)s)"

    def _format_action_invocation(self, action):
        names = action.option_strings
        longs = [n for n in names if n.startswith("--")]
        shown = [n for n in names if len(n) == 2] + longs[:1]  # one long name; older spellings are accepted
        if not names or len(shown) == len(names) or not shown:
            return super()._format_action_invocation(action)
        listed = copy.copy(action)
        listed.option_strings = shown
        return super()._format_action_invocation(listed)


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=Formatter)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def add_store_args(p: argparse.ArgumentParser) -> None:
    """--store and the S3 connection options, defined once for every script."""
    g = p.add_argument_group("object store")
    g.add_argument(
        "--store",
        "-store",
        default=None,
        help="store URL: s3://bucket[/prefix] or a local directory (default: $MLLIB_STORE, else ./store)",
    )
    g.add_argument(
        "--endpoint_url",
        default=None,
        help="S3 endpoint for MinIO/SeaweedFS/Ceph (default: $AWS_ENDPOINT_URL, else AWS)",
    )
    g.add_argument("--ca_bundle", default=None, help="CA bundle file for the S3 endpoint's TLS certificate")
    g.add_argument(
        "--no_verify_tls",
        action="store_true",
        help="do not verify the S3 endpoint's TLS certificate (insecure; prefer --ca_bundle)",
    )


def add_download_args(p: argparse.ArgumentParser) -> None:
    """Flags of a download job (getcoco.py, getcityscapes.py); mllib.get.download.Job.from_args reads them."""
    g = p.add_argument_group("download")
    g.add_argument("--workdir", "-path", default="downloads", help="where zips are downloaded (NAME.part while partial)")
    g.add_argument("--keep_zips", action="store_true", help="keep the zips after a verified extraction")
    g.add_argument("--jobs", type=Range(1, 256), default=16, help="concurrent uploads into the store")
    g.add_argument("--retries", type=Range(0, 100), default=8, help="retries per file on resets, timeouts and 5xx")
    g.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")


def add_settings(p: argparse.ArgumentParser, cls, title: str | None = None) -> None:
    """One flag per field of the dataclass `cls` (made with mllib.checks.setting): --name (and -name where the field
    says alias), its default and help, bool fields as on/off switches; the dataclass checks the values."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    g = p.add_argument_group(title) if title else p
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, hints[f.name]
        names = [f"--{f.name}"] + ([f"-{f.name}"] if meta.get("alias") else [])
        names += [n for o in meta.get("old", ()) for n in (f"--{o}", f"-{o}")]
        if kind is bool:
            g.add_argument(*names, action="store_true", default=f.default, help=meta.get("help"))
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # str | None -> str
        g.add_argument(*names, type=base, default=f.default, choices=meta.get("choices"), help=meta.get("help"))


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config FILE (settings from a YAML or JSON file; flags on the command line override it) and --print_config."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a YAML (or .json) file, keyed by the flags' names (batch_size: 16); flags on "
                        "the command line override it")
    p.add_argument("--print_config", action="store_true",
                   help="print the effective settings as YAML (usable as --config) and exit")


def load_config(path: str) -> dict:
    """A --config file's settings: a mapping from flag names (without dashes) to values."""
    import json

    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from None
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        if kind == "JSON":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ModuleNotFoundError:
        raise UsageError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or give a .json "
                         "file") from None
    except Exception as e:  # noqa: BLE001 - json.JSONDecodeError, yaml.YAMLError and its kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--config {path}: not valid {kind} ({first})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UsageError(f"--config {path}: must be a mapping of flag names to values (batch_size: 16)")
    return {k.lstrip("-").replace("-", "_"): v for k, v in data.items()}


def parse_with_config(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """p.parse_args(argv), the --config file's settings taking the place of the defaults (the command line wins).
    A setting no flag has is a usage error naming it."""
    known, _ = p.parse_known_args(argv)
    if getattr(known, "config", None):
        data = load_config(known.config)
        # a setting by any of its flag's names (an older spelling, such as trainingset for train_annotations, too)
        dests = {o.lstrip("-"): a.dest for a in p._actions for o in (*a.option_strings, "--" + a.dest)
                 if a.dest not in ("help", "version", "config", "print_config")}
        unknown = sorted(set(data) - set(dests))
        if unknown:
            raise UsageError(f"--config {known.config}: no such setting(s): {', '.join(unknown)}")
        named = {}
        for k, v in data.items():
            if dests[k] in named:
                raise UsageError(f"--config {known.config}: {dests[k]} is given twice (as {k} and another name)")
            named[dests[k]] = v
        p.set_defaults(**named)
    return p.parse_args(argv)


def print_config(settings: dict) -> None:
    """The effective settings as YAML (JSON-compatible values; a file --config reads back)."""
    import json

    for k, v in settings.items():
        print(f"{k}: {json.dumps(v)}")


def add_log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", "--log_level", dest="log_level", default="INFO", type=log_level,
                   help="logging level: debug, info, warning, error, critical")


def open_store(args: argparse.Namespace):
    from mllib import store

    return store.connect(
        args.store,
        endpoint_url=args.endpoint_url,
        ca_bundle=args.ca_bundle,
        verify=not args.no_verify_tls,
    )


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(parse_args: Callable, body: Callable[[argparse.Namespace], int], argv=None, prog: str | None = None) -> int:
    """A script's main(): parse the flags, set up logging, run body(args) with run()'s error handling."""
    def parsed_and_run():
        args = parse_args(argv)  # inside run(): flags that need a missing extra say which to install
        setup_logging(args.log_level)
        return body(args)

    return run(parsed_and_run, prog)


# Exit statuses of every command (README "Exit status"): what a scheduler or a shell script can act on.
EXIT_OK = 0
EXIT_FAILED = 1  # the input or the job failed (bad data, checksum, access denied, a missing object)
EXIT_USAGE = 2  # a bad flag or value (argparse's status, and mllib.UsageError)
EXIT_TEMPORARY = 75  # the network or the store unavailable after retries, preempted training: re-run later
EXIT_INTERRUPTED = 130  # Ctrl-C


def run(main: Callable[[], int], prog: str | None = None) -> int:
    """Run a command's body: an error is one line on stderr and the exit status of its class (EXIT_*), no
    traceback."""
    name = prog or os.path.basename(sys.argv[0] or "mllib")
    try:
        return int(main() or 0)
    except MllibError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return e.exit_status
    except ModuleNotFoundError as e:  # an extra that is not installed: which one to install
        module = (e.name or "").split(".")[0]
        if module not in EXTRAS:
            raise
        print(f"{name}: error: {MissingExtra(module)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # the machine's side: disk full, permission denied, a missing local file
        from mllib.atomic import is_full, no_space

        if is_full(e):
            print(f"{name}: error: {no_space(e.filename or os.getcwd())}", file=sys.stderr)
            return 1
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{name}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug or an input nobody foresaw: one line, the traceback in a file
        path = _write_traceback(name)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{name}: internal error: {type(e).__name__}: {first} (full traceback: {path})", file=sys.stderr)
        return 1


def _write_traceback(name: str) -> str:
    """Write the current exception's traceback to a private file; returns its path (or why it could not)."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    try:
        fd, path = tempfile.mkstemp(prefix=f"mllib-{name.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".traceback.txt")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError as e:
        return f"not written: {e.strerror}"
