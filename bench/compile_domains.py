"""Domain switches under torch.compile: the trainer's graph (class dimension dynamic, the domain passed as
tensors) against one graph per domain (the domain name a constant of the graph, static shapes).

    python -m bench.compile_domains [--backbone NAME] [--depth N] [--image-size S] [--batch B] [--out FILE.json]

Both variants run the same UDONStep steps (forward, backward, AdamW) on three domains of 5, 7 and 3
classes: two rounds over the domains.  Reported per variant: the graphs compiled (forward graphs counted
by dynamo's `unique_graphs`), the seconds of each step (the first step of a domain includes its
compilation) and the first round's total.  The default is the trainer's default backbone
(EfficientNet-Lite0) at 32 px, B = 8, on CPU with inductor; `--depth N` builds a ViT with N blocks.
"""

import argparse
import time
from pathlib import Path

import torch

from bench.suite import emit_json
from udon_fast.model import UDONModel
from udon_fast.trainer.optimizer import build_optimizer
from udon_fast.trainer.step import LossOptions, UDONStep

DOMAINS = {"a": 5, "b": 7, "c": 3}


class PerDomainStep(UDONStep):
    """The alternative: the domain name enters the compiled function, so each domain compiles its own
    graph (static shapes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_domain = torch.compile(self._domain_forward, fullgraph=True, dynamic=False)

    def _domain_forward(self, images, labels, domain):
        return self._forward_loss(
            images,
            labels,
            self.teacher_params[domain],
            student_weight=self.model.student_classifier(domain),
            teacher_weight=self.model.teacher_classifier(domain),
        )

    def _forward(self, images, labels, domain):
        return self.per_domain(images, labels, domain)


def run(variant: str, backbone: str, image_size: int, batch: int, depth: int | None) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = UDONModel(
        backbone,
        DOMAINS,
        image_size=image_size,
        pretrained=None,
        backbone_kwargs=None if depth is None else {"depth": depth},
    )
    optimizer = build_optimizer(model, lr=1e-3, backbone_lr_mult=1e-2, weight_decay=1e-6)
    options = LossOptions(
        margin_type="normface",
        margin=0.0,
        scale=16.0,
        temperature=0.1,
        kl_weight=1.0,
        similarity_weight=1.0,
        backend="auto",
        n_devices=1,
    )
    step_type = PerDomainStep if variant == "per_domain" else UDONStep
    step = step_type(model, optimizer, options, compile=variant != "per_domain", grad_clip=None, world_size=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    seconds = []
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(2):
        for domain, classes in DOMAINS.items():
            labels = torch.randint(0, classes, (batch,), generator=gen)
            start = time.perf_counter()
            step.apply(torch.stack(list(step(images, labels, domain))))
            seconds.append(round(time.perf_counter() - start, 2))
    return {
        "variant": variant,
        "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before,
        "step_seconds": seconds,
        "first_round_seconds": round(sum(seconds[: len(DOMAINS)]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compile_domains", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--depth", type=int, help="ViT blocks (a ViT backbone only)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["dynamic_classes", "per_domain"],
        choices=["dynamic_classes", "per_domain"],
        help="in this order (the first pays one-off warm-up)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = [run(v, args.backbone, args.image_size, args.batch, args.depth) for v in args.variants]
    emit_json(
        {
            "backbone": args.backbone,
            "depth": args.depth,
            "image_size": args.image_size,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
