"""The `lcs` command: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from models import commands

Handler = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from server.main import run

    return run(args)


def _controller(args: argparse.Namespace) -> int:
    from controller.watch import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None], handler: Handler
    ) -> None:
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(handler=handler)

    add("serve", "serve predictions over HTTP", _add_serve, _serve)
    add("train", "train a compressible subspace", commands.add_train, commands.run_train)
    add(
        "eval", "accuracy of a checkpoint at a grid of levels", commands.add_eval, commands.run_eval
    )
    add("profile", "MACs, weight memory and latency per level", _add_profile, _profile)
    add(
        "controller",
        "show live readings and the level the policy would choose",
        _add_controller,
        _controller,
    )
    return parser


def _add_serve(p: argparse.ArgumentParser) -> None:
    from server.main import add_arguments

    add_arguments(p)


def _add_profile(p: argparse.ArgumentParser) -> None:
    commands.add_profile(p)
    p.add_argument(
        "--tier",
        choices=("torch", "onnx"),
        default="onnx",
        help="what times each level: onnx (default), an ONNX Runtime session as the daemon "
        "serves a settled level; torch, the PyTorch forward pass it serves meanwhile",
    )


def _profile(args: argparse.Namespace) -> int:
    if args.tier == "torch":
        return commands.run_profile(args)
    from server.profile_tier import onnx_runner  # onnxruntime: server/ only

    return commands.run_profile(args, onnx_runner(args.threads))


def _add_controller(p: argparse.ArgumentParser) -> None:
    from controller.watch import add_arguments

    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
