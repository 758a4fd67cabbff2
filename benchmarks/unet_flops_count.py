"""Count the FLOPs of one Stable Diffusion v1.5 UNet forward pass (the constant behind per-image costs).

Builds the UNet2DConditionModel of SD v1.5's published unet/config.json with random weights (no
download) and counts its FLOPs with torch.utils.flop_counter at 64x64 and 96x96 latents (512 and
768 px). The cost model's ``UNET_POSITION_FRACTION`` (mii_azure/performance.py) is
FLOPs / (2 x parameters x latent positions) at 64x64. A count, not a timing: the result does not
depend on the machine or its load. Run:

    .venv/bin/python benchmarks/unet_flops_count.py

Results go to ``benchmarks/results/unet_flops_count.json``. Needs diffusers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


def main() -> None:
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    parameters = sum(parameter.numel() for parameter in unet.parameters())
    counts = {}
    for side in (64, 96):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            unet(torch.randn(1, 4, side, side), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 77, 768))
        flops = counter.get_total_flops()
        counts[f"{side}x{side}"] = {
            "flops_per_forward": flops,
            "position_fraction": flops / (2 * parameters * side * side),
        }
    result = {
        "benchmark": "unet_flops_count",
        "date": time.strftime("%Y-%m-%d"),
        "model": "Stable Diffusion v1.5 UNet architecture (random weights), batch 1, one forward pass",
        "parameters": parameters,
        "counts": counts,
        "torch": torch.__version__,
    }
    out = ROOT / "benchmarks" / "results" / "unet_flops_count.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
