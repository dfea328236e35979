"""The package's commands.

    python -m skypilot_temporal new-key [ID]    print a new payload codec key line
    python -m skypilot_temporal codec-server    serve the payload codec to the Web UI and CLI

Installed from the wheel, `skypilot-temporal` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skypilot_temporal.errors import ConfigError
from skypilot_temporal.trust import codec, codec_server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skypilot_temporal", description="SkyPilot on Temporal.")
    commands = parser.add_subparsers(dest="command", required=True)
    new_key = commands.add_parser(
        "new-key",
        help="print a new id:base64key line",
        epilog=(
            "python -m skypilot_temporal new-key >> ~/.config/skypilot-temporal/codec.keys adds a key "
            "that decrypts; the FIRST line of the file is the key that encrypts."
        ),
    )
    new_key.add_argument("id", nargs="?", help="key id (default: k + the UTC time + a random suffix)")
    commands.add_parser(
        "codec-server", help="decrypt payloads for the Web UI and the temporal CLI (settings: CODEC_SERVER_*)"
    )
    args = parser.parse_args(argv)
    if args.command == "codec-server":
        return codec_server.main()
    try:
        print(codec.new_key_line(args.id))
    except ConfigError as err:
        print(f"new-key: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
