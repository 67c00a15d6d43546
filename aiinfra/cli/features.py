"""``aiinfra features suggest``: the transforms ``features: auto`` would use, as YAML to edit."""

from __future__ import annotations

import argparse

from aiinfra.cli.common import print_json
from aiinfra.config import load_config


def _suggest(args: argparse.Namespace) -> None:
    from aiinfra.cli.data import _catalog
    from aiinfra.data.suggest import suggest_features
    from aiinfra.training.trees import is_tree_family

    version = _catalog(load_config()).get(args.dataset)
    columns = version.profile.columns
    if args.label not in columns:
        from aiinfra.errors import InvalidInput

        raise InvalidInput(f"{version.ref} has no column {args.label!r} (--label); it has {', '.join(columns)}")
    exclude = {c: "excluded (--exclude)" for c in args.exclude}
    suggestion = suggest_features(version.profile, label=args.label, keys=list((version.spec or {}).get("key") or []),
                                  exclude=exclude, for_trees=is_tree_family(args.family), max_one_hot=args.max_one_hot,
                                  source=version.ref)
    if args.json:
        return print_json({"dataset": version.ref, "features": suggestion.spec.model_dump(mode="json", exclude_none=True)["features"],
                           "left_out": suggestion.left_out})
    print(f"# {version.ref}, for model.family {args.family}: save as a file and name it in data.features")
    print(suggestion.to_yaml(), end="")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    features = sub.add_parser("features", help="feature transforms: suggest a spec from a dataset's profile")
    fsub = features.add_subparsers(dest="features_command", required=True)
    suggest = fsub.add_parser("suggest", help="the transforms `features: auto` infers for DATASET, as YAML")
    suggest.add_argument("dataset", help="NAME (the latest version) or NAME@VERSION")
    suggest.add_argument("--label", required=True, help="the label column (left out of the features)")
    suggest.add_argument("--family", default="tabular_mlp", choices=["tabular_mlp", "image_cnn", "xgboost", "lightgbm"],
                         help="the model family (tree families skip the scaling)")
    suggest.add_argument("--exclude", action="append", default=[], metavar="COLUMN", help="leave COLUMN out (repeatable)")
    suggest.add_argument("--max-one-hot", type=int, default=20, help="one-hot up to this many distinct values, else ordinal")
    suggest.add_argument("--json", action="store_true")
    suggest.set_defaults(func=_suggest)
