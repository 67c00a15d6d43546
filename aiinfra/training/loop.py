"""The per-worker training function for Ray Train's TorchTrainer (DDP over gloo on CPU, NCCL on GPU).

A plain function of a config dict; ``pipelines`` wires it to TorchTrainer. Data arrives as
this worker's shard of the Ray Data dataset named "train", with columns ``x`` (the
preprocessed feature vector) and ``y``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aiinfra.training.models import build_model, seed_everything

__all__ = ["train_loop"]


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    seed_everything(int(config.get("seed", 0)) + rank)
    model = build_model(config["family"], config["input_dim"], config["output_dim"], config.get("params"))
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("lr", 1e-2)))
    loss_fn = nn.BCEWithLogitsLoss()
    shard = ray.train.get_dataset_shard("train")
    batch_size = int(config.get("batch_size", 256))

    for epoch in range(int(config.get("epochs", 3))):
        model.train()
        total, count = 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes={"x": torch.float32, "y": torch.float32}):
            optimizer.zero_grad()
            logits = model(batch["x"]).squeeze(-1)
            loss = loss_fn(logits, batch["y"])
            loss.backward()  # DDP averages gradients across workers here
            optimizer.step()
            total += float(loss) * len(batch["y"])
            count += len(batch["y"])
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_file({k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(Path(tmp) / "weights.safetensors"))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
