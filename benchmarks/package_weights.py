"""Make a `mstools train` result the packaged default weights of its network.

Stores the floating-point tensors as float16 (as every packaged weight file, to stay
small), and writes the card: the training card of the run, the description given, the
validation figures measured against the previous packaged weights (JSON), and the
command that made it.

Run: python benchmarks/package_weights.py RUN/model.pt MODEL --description TEXT \
        --validation FIGURES.json [--training-command TEXT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mstools.detect.deep.weights import load_weights, save_weights
from mstools.io import sha256 as file_sha256
from mstools.models import card_path, packaged_model, write_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="model.pt written by mstools train")
    parser.add_argument("model", choices=("coactseg", "unet", "multitask"))
    parser.add_argument("--description", required=True)
    parser.add_argument("--validation", type=Path, required=True,
                        help="JSON with the validation figures of the new and the previous weights")
    parser.add_argument("--training-command", default="")
    args = parser.parse_args()
    config, state_dict, extra = load_weights(args.weights)
    if config.model != args.model:
        raise SystemExit(f"{args.weights} holds a {config.model} network, not {args.model}")
    target = packaged_model("deep", args.model)
    previous = json.loads(card_path(target).read_text())
    save_weights(target, config, state_dict, extra=extra, half=True)
    card = json.loads(card_path(args.weights).read_text())
    card.update({
        "weights": target.name, "sha256": file_sha256(target),
        "storage": "float16 (cast to float32 on loading)",
        "description": args.description,
        "training_command": args.training_command,
        "held_out": json.loads(args.validation.read_text()),
        "previous_weights": {"sha256": previous.get("sha256"), "description": previous.get("description"),
                             "training_data": previous.get("training_data")},
    })
    write_card(target, card)
    print(target)


if __name__ == "__main__":
    main()
