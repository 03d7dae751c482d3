"""``python -m gfm.pipeline [--write dvc.yaml]``: the same as ``gfm pipeline``."""

import argparse
import sys

from gfm.pipeline.dvc_yaml import add_commands

parser = argparse.ArgumentParser(prog="python -m gfm.pipeline")
add_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["pipeline", *sys.argv[1:]])
raise SystemExit(args.func(args))
