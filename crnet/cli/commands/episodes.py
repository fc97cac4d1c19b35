"""`crnet episodes`: the (query, class, supports) list `crnet eval` scores, as JSON.

The library side is crnet.data.protocol.episode_protocol; the options are `crnet eval`'s
data options with the same defaults, so the same options name the same episodes.
"""

from __future__ import annotations

import argparse

from crnet.cli.arguments import add_data_group, add_episodes, add_json, add_shots
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data group with --sampler, --shots, --episodes and --json (as `crnet eval`)."""
    parser.description = ("Write the (query id, class, support ids) of every episode "
                          "`crnet eval` scores with the same options, without loading an "
                          "image (pascal-5i).")
    add_data_group(parser, sampler=True,
                   seed_help="seed of the episode draw (default 0; HSNet's test runs 0, "
                             "PFENet's 321)")
    add_shots(parser)
    add_episodes(parser, default=1000,
                 help="episodes to list (default 1000, as crnet eval; HSNet's test runs "
                      "1000, PFENet's 5001)")
    add_json(parser, help="write the episode list JSON here (default: print it)")


def run(args: argparse.Namespace) -> int:
    """Plan the episodes, write or print the JSON, and print a one-line summary."""
    import json

    from crnet.cli.arguments import at_least, check_data_root
    from crnet.data.protocol import episode_protocol, write_protocol
    from crnet.runtime.files import check_writable_file

    if args.dataset != "pascal-5i":
        raise UsageError(f"--dataset {args.dataset} has no image ids to list; "
                         "crnet episodes takes --dataset pascal-5i")
    check_data_root(args.dataset, args.data_root)
    at_least("--shots", args.shots, 1)
    at_least("--episodes", args.episodes, 1)
    if args.json is not None:
        check_writable_file(args.json, "--json")
    record = episode_protocol(args.data_root, fold=args.fold, seed=args.seed,
                              sampler=args.sampler, shots=args.shots, episodes=args.episodes,
                              dataset=args.dataset)
    if args.json is None:
        print(json.dumps(record, indent=2))
        return 0
    write_protocol(args.json, record)
    classes = {}
    for entry in record["protocol"]:
        classes[entry["class"]] = classes.get(entry["class"], 0) + 1
    mix = ", ".join(f"{c}: {n}" for c, n in sorted(classes.items()))
    print(f"wrote {args.json}: {record['episodes']} episodes, {args.shots}-shot, fold "
          f"{args.fold}, sampler {args.sampler}, seed {args.seed} (episodes per class "
          f"{mix})")
    return 0
