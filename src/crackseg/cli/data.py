"""`crackseg data`, `crackseg train` and `crackseg teach`: the data, training, and a teacher's maps."""

from __future__ import annotations

import os

from crackseg.extras import has_torch


def cmd_data(args) -> int:
    from crackseg.data import find_all_pairs, pairs_per_source, split_pairs

    pairs = find_all_pairs(args.data, args.skip_unpaired)
    train, val = split_pairs(pairs, args.val_fraction, args.split_seed)
    val_names = {p.image for p in val}
    print(f"{'source':<14}{'pairs':>7}{'val':>6}{'crack %':>9}")
    for source, entry in pairs_per_source(pairs).items():
        n_val = sum(1 for p in pairs if p.source == source and p.image in val_names)
        print(f"{source:<14}{entry['pairs']:>7}{n_val:>6}{100 * entry['crack_fraction']:>9.2f}")
    print(f"{'all':<14}{len(pairs):>7}{len(val):>6}")
    return 0


def cmd_train(args) -> int:
    from crackseg.train import train
    from crackseg.train.arguments import config_from_args

    result = train(config_from_args(args))  # the flags over --config's file over a resumed run's saved settings
    if os.environ.get("RANK", "0") == "0":
        print(f"best model: {result.best_model_dir}  (use it with --weights {result.best_model_dir})")
    return 0


def cmd_teach(args) -> int:
    from crackseg.cli.common import segmenter_from_args
    from crackseg.data import find_all_pairs
    from crackseg.runs.plan import shard
    from crackseg.train.distill import write_teacher_maps

    pairs = shard(find_all_pairs(args.data, args.skip_unpaired, exclude_splits=("test",)), args.shard)
    segmenter = segmenter_from_args(args, tta=True)
    made = write_teacher_maps(segmenter, pairs, args.out)
    print(f"{made} teacher maps written to {args.out} ({len(pairs) - made} were there already)")
    return 0


def add_parsers(sub, command: str | None) -> None:
    """`train`'s options come from crackseg.train, whose torch import the other commands need not pay for."""
    from crackseg.cli.common import add_model_arguments
    from crackseg.data import add_split_arguments

    p = sub.add_parser("data", help="list the pairs found under data roots, per source, with the split")
    p.add_argument("data", nargs="+")
    add_split_arguments(p)
    p.add_argument("--skip-unpaired", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model (needs the train extra)")
    if command in (None, "train") and has_torch():
        from crackseg.train.arguments import add_arguments

        add_arguments(p)

    p.set_defaults(func=cmd_train)

    p = sub.add_parser("teach", help="a teacher model's probability maps of training photos, for distillation")
    p.add_argument("--data", nargs="+", required=True, help="data roots, as for train")
    p.add_argument("--out", required=True, help="folder of the maps (train --teacher-maps FOLDER)")
    p.add_argument("--skip-unpaired", action="store_true")
    p.add_argument("--shard", help="only the i-th of n slices of the pairs, e.g. 0/4 (processes side by side)")
    add_model_arguments(p)
    p.set_defaults(func=cmd_teach)
