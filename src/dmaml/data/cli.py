"""The data-stage subcommands of ``dmaml``: download-omniglot, prepare-omniglot, prepare-miniimagenet.

:func:`add_commands` registers them on the main ``dmaml`` parser (:mod:`dmaml.cli`). Each command
returns 0 on success; bad input raises a :class:`~dmaml.errors.UserError` whose one-line message
the main command prints before exiting with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dmaml.data.download import OMNIGLOT_ARCHIVES, OMNIGLOT_URL, obtain
from dmaml.data.miniimagenet import prepare_miniimagenet
from dmaml.data.omniglot import BACKGROUNDS, EVALUATION, prepare_omniglot

SMALL = {"1": "images_background_small1", "2": "images_background_small2"}


def _background(args: argparse.Namespace) -> str:
    return SMALL[args.small] if args.small else BACKGROUNDS[0]


def download_omniglot(args: argparse.Namespace) -> int:
    """``dmaml download-omniglot``: fetch and check the two zips into ``--out-dir``."""
    for key in (_background(args), EVALUATION):
        obtain(args.source, OMNIGLOT_ARCHIVES[key], args.out_dir, strict=args.strict,
               timeout=args.timeout)
    return 0


def prepare_omniglot_command(args: argparse.Namespace) -> int:
    """``dmaml prepare-omniglot``: the zips of ``--source`` into the HDF5 file ``--out``."""
    prepare_omniglot(args.source, args.out, background=_background(args),
                     val_alphabets=args.val_alphabets, strict=args.strict,
                     download_dir=args.download_dir, timeout=args.timeout)
    return 0


def prepare_miniimagenet_command(args: argparse.Namespace) -> int:
    """``dmaml prepare-miniimagenet``: a local miniImageNet copy into the HDF5 file ``--out``."""
    prepare_miniimagenet(args.source, args.out, aggregate_val_test=args.aggregate_val_test,
                         threads=args.threads)
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def _omniglot_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", default=OMNIGLOT_URL, metavar="DIR-or-URL",
        help="a folder holding images_background.zip and images_evaluation.zip, or a URL prefix "
             "(https://, file://) they are fetched from (default: %(default)s)")
    parser.add_argument(
        "--strict", action="store_true",
        help="refuse zips whose checksum differs from the official one (default: accept them "
             "with a warning naming both checksums, e.g. a re-encoded local copy)")
    parser.add_argument(
        "--small", choices=sorted(SMALL),
        help="use the official small background subset images_background_small1.zip or "
             "..._small2.zip instead of the full images_background.zip for training")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up on a stalled download after this long (default: 60)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``download-omniglot``, ``prepare-omniglot`` and ``prepare-miniimagenet``."""
    p = subparsers.add_parser(
        "download-omniglot", help="fetch the official Omniglot zips and check their checksums",
        description="Fetch images_background.zip and images_evaluation.zip from a URL prefix or "
                    "a local folder into --out-dir (through a temporary name) and check them "
                    "against the official checksums.")
    _omniglot_source_options(p)
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                   help="folder to put the zips in, e.g. resources/omniglot")
    p.set_defaults(func=download_omniglot)

    p = subparsers.add_parser(
        "prepare-omniglot", help="build the Omniglot HDF5 file from the official zips",
        description="Preprocess the Omniglot zips into one HDF5 file: background -> train, "
                    "evaluation -> test (and val), every character x rotations 0/90/180/270 a "
                    "class, 28x28 Lanczos-resized uint8 [N,28,28,1]. Written to a temporary name "
                    "and renamed when complete.")
    _omniglot_source_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="PATH",
                   help="the HDF5 file to write, e.g. resources/omniglot.h5")
    p.add_argument("--val-alphabets", type=_count, default=0, metavar="N",
                   help="hold out the first N evaluation alphabets (sorted) as the val split; 0 "
                        "(default, as the paper) makes val the same classes as test")
    p.add_argument("--download-dir", type=Path, metavar="DIR",
                   help="where a URL source is downloaded to (default: the folder of --out, "
                        "subfolder omniglot)")
    p.set_defaults(func=prepare_omniglot_command)

    p = subparsers.add_parser(
        "prepare-miniimagenet", help="build the miniImageNet HDF5 file from a local copy",
        description="Preprocess a local miniImageNet copy (images/ + train/val/test.csv; "
                    "train|val|test/<wnid>/*.jpg; or mini-imagenet-cache-{train,val,test}.pkl, "
                    "detected automatically) into one HDF5 file of 84x84x3 uint8 images, "
                    "streaming class by class. Written to a temporary name and renamed when "
                    "complete.")
    p.add_argument("--source", metavar="DIR",
                   help="the folder of your miniImageNet copy (there is no free download; "
                        "without it the command says where to get one)")
    p.add_argument("--out", type=Path, required=True, metavar="PATH",
                   help="the HDF5 file to write, e.g. resources/miniimagenet.h5")
    p.add_argument("--aggregate-val-test", action=argparse.BooleanOptionalAction, default=False,
                   help="let the test split hold the val and the test classes, as the paper "
                        "does (default: off)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="image decoding threads (default: the number of CPUs)")
    p.set_defaults(func=prepare_miniimagenet_command)

