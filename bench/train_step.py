"""Seconds per training step (forward + backward + Adam) for the recipes segnode compares.

Why: on 2 CPU cores the training budget is counted in steps, so the recipe table in
``docs/models.md`` is designed from these figures (what fits in a ~10-minute fold run).
Random inputs of the training crop's shape; the loss is each recipe's own.

    .venv/bin/python bench/train_step.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from segnode.pipeline.training.recipes import RECIPES, build_recipe_network, recipe_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", action="append", help="recipe name (default: all)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step (segnode cv: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.recipe or list(RECIPES)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"{args.steps} timed steps"
    )
    print(f"{'recipe':<24} {'crop':<14} {'params':>8} {'s/step':>8}")
    for name in names:
        recipe = RECIPES[name]
        network = build_recipe_network(recipe).to(memory_format=torch.channels_last_3d)
        optimiser = torch.optim.Adam(network.parameters(), lr=1e-4)
        shape = (args.batch, 4, *recipe.crop)
        image = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
        target = (torch.rand(args.batch, 3, *recipe.crop) > 0.9).float()
        network.train()
        times = []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            optimiser.zero_grad()
            loss = recipe_loss(recipe, network, image, target).total
            loss.backward()
            optimiser.step()
            if step:  # the first step allocates
                times.append(time.perf_counter() - started)
        params = sum(p.numel() for p in network.parameters()) / 1e6
        crop = "x".join(map(str, recipe.crop))
        print(f"{name:<24} {crop:<14} {params:>7.2f}M {sum(times) / len(times):>8.2f}")


if __name__ == "__main__":
    main()
