"""``python -m tools.predict RUN_DIR IMAGES_OR_FOLDERS...``: classify images with a trained run (``mpl-predict``).

    python -m tools.predict RUN_DIR photos/ img.png [--classes a,b,c | --classnames FILE] [--top-k 3] [--out preds.csv]
    python -m tools.predict RUN_DIR --export head.safetensors [--classes ...]

Writes one CSV row per image (``path,prediction,score[,prediction_2,score_2,...]``: class names and softmax
probabilities) to ``--out`` or stdout; folders are searched recursively; a progress bar (and with ``--verbose``
the model's build messages) go to stderr. ``--export`` writes the run's classifier as a head for plain CLIP (``.pt`` or ``.safetensors``,
see :mod:`trainers.predict`); with images too, both are done. Bad input (a missing run, image or file, a method
that cannot take other classes or be exported) is one ``error:`` line, exit status 2, with nothing written.
"""
from __future__ import annotations

import argparse
import csv
import os.path as osp
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.predict",
                                description="Classify images with a trained run, or export its classifier.")
    p.add_argument("run_dir", help="a finished run folder (train.py's --output-dir), training or --eval-only")
    p.add_argument("images", nargs="*", help="image files and folders (searched recursively)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--classes", help="comma-separated class names (default: the run's own classes)")
    names.add_argument("--classnames", metavar="FILE", help="a text file of class names, one a line")
    p.add_argument("--top-k", type=int, default=1, help="classes per image, most probable first (default 1)")
    p.add_argument("--out", help="the CSV file to write (default: stdout)")
    p.add_argument("--export", metavar="HEAD", help="write the classifier as a head for plain CLIP (.pt or "
                                                    ".safetensors)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's test batch size)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "amp"), help="default: the run's")
    p.add_argument("--verbose", action="store_true", help="show the model's build messages on stderr")
    return p


def write_csv(predictions, f, top_k):
    k = max((len(p.classes) for p in predictions), default=min(top_k, 1))
    cols = ["path", "prediction", "score"]
    for i in range(2, k + 1):
        cols += [f"prediction_{i}", f"score_{i}"]
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(cols)
    for p in predictions:
        row = [p.path]
        for name, score in zip(p.classes, p.scores):
            row += [name, f"{score:.6f}"]
        writer.writerow(row)


def run(args) -> int:
    from trainers.compat import UserError, atomic_write
    from trainers.predict import check_classnames, check_head_path, find_images, load_run, read_classnames

    if not args.images and not args.export:
        raise UserError("give images or folders to classify, or --export HEAD to export the classifier")
    if args.top_k < 1:
        raise UserError(f"--top-k is {args.top_k}; give a whole number of at least 1")
    classnames = None
    if args.classes is not None:
        classnames = check_classnames(args.classes.split(","), "--classes")
    elif args.classnames:
        classnames = read_classnames(args.classnames)
    images = find_images(args.images) if args.images else []
    if args.out and not osp.isdir(osp.dirname(osp.abspath(args.out))):
        raise UserError(f'--out "{args.out}": the folder {osp.dirname(osp.abspath(args.out))} does not exist')
    if args.export:
        check_head_path(args.export)
    clf = load_run(args.run_dir, device=args.device, precision=args.precision, batch_size=args.batch_size,
                   progress=True, verbose=args.verbose)
    predictions = clf.classify(images, classnames=classnames, top_k=args.top_k) if images else None
    head = clf.head(classnames) if args.export else None  # checked before anything is written
    if head is not None:
        path = clf.export_head(args.export, classnames)
        print(f"wrote the head ({len(head['classnames'])} classes, {head['text_features'].shape[1]}-dim features): "
              f"{path}", file=sys.stderr)
    if predictions is not None:
        if args.out:
            atomic_write(args.out, lambda f: write_csv(predictions, f, args.top_k))
            print(f"wrote {len(predictions)} predictions: {args.out}", file=sys.stderr)
        else:
            write_csv(predictions, sys.stdout, args.top_k)
    return 0


def main(argv=None) -> int:
    from trainers.compat import UserError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
