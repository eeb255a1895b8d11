"""`rlhfkit label <action>`: the human-feedback web app and its admin commands.

    rlhfkit label serve --db sqlite:///labels.db [--host 127.0.0.1] [--port 8000] [--admin-token-file F] [--session-key-file K]
    rlhfkit label add-annotator NAME --db URL          prints the annotator's secret login token
    rlhfkit label load QUEUE.jsonl --db URL [--overlap 2]   the output of `rlhfkit sample`
    rlhfkit label export OUT.jsonl --db URL [--source human]   preference pairs for `rm` / `dpo`
    rlhfkit label stats --db URL                        throughput and inter-annotator agreement
"""

from __future__ import annotations

import argparse
import json
import sys


def _positive(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhfkit label", description="labelling web app and its admin commands")
    sub = p.add_subparsers(dest="action", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_text)
        a.add_argument("--db", default="sqlite:///feedback.db", help="SQLAlchemy URL of the feedback store")
        return a

    s = add("serve", "run the labelling web app")
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    s.add_argument("--port", type=_port, default=8000)
    s.add_argument("--admin-token", default=None, help="admin token (visible in `ps`: prefer --admin-token-file or "
                   "$RLHFKIT_ADMIN_TOKEN; default: a printed random one)")
    s.add_argument("--admin-token-file", default=None, help="read the admin token from this file (first line)")
    s.add_argument("--session-key-file", default=None, help="session-signing key, created (mode 0600) if missing "
                   "(default: beside an SQLite database, else ./rlhfkit-session.key)")
    add("add-annotator", "create an annotator and print their login token").add_argument("name")
    ld = add("load", "enqueue prompts with responses (JSONL from `rlhfkit sample`)")
    ld.add_argument("path")
    ld.add_argument("--overlap", type=_positive, default=1, help="annotators per item (>= 2 measures agreement)")
    ex = add("export", "write preference pairs as JSONL")
    ex.add_argument("out")
    ex.add_argument("--source", default=None, choices=["human", "simulated", "ai"])
    add("stats", "per-annotator throughput and inter-annotator agreement")
    return p


def main(argv: list[str]) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    args = parser().parse_args(argv)
    try:
        run(args)
    except SQLAlchemyError as e:  # a bad URL, an unreachable server, a file SQLite cannot open
        cause = getattr(e, "orig", None) or e
        print(f"rlhfkit label: error: database {args.db!r}: {str(cause).splitlines()[0]}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # the URL names a driver that is not installed (postgresql://, mysql://)
        print(f"rlhfkit label: error: database {args.db!r} needs the Python package {e.name!r}: pip install it",
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # a file that cannot be read or written, a port in use
        print(f"rlhfkit label: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> None:
    from rlhfkit.feedback import admin

    if args.action == "serve":
        token = args.admin_token
        if args.admin_token_file:
            with open(args.admin_token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        admin.serve(args.db, args.host, args.port, token, args.session_key_file)
    elif args.action == "add-annotator":
        print(admin.add_annotator(args.db, args.name))
    elif args.action == "load":
        print(json.dumps(admin.load(args.db, args.path, args.overlap)))
    elif args.action == "export":
        print(f"wrote {admin.export(args.db, args.out, args.source)} pairs to {args.out}")
    elif args.action == "stats":
        print(json.dumps(admin.stats(args.db), indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
