"""Time and peak memory of the prompt-learning text and vision paths on a ViT-B/16-sized CLIP, bf16 on CUDA.

Random-init weights from a ViT-B/16 ``CLIPConfig`` (no download). Measures a MaPLe-shaped training step's paths:
text features for 50 class prompts with 2-token deep prompts at layers 1..8, and image features for a batch of 32
224 px images with 2 appended vision prompts replaced at layers 1..8, forward and backward to the prompts, under
bf16 autocast. Also checks (float32) that the paths without prompts equal get_text_features/get_image_features.

    python benchmarks/gpu_paths.py [--device cuda:0] [--images 32] [--classes 50] [--repeats 10]

On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CLIPModel

from recorders.clip.backbone import vit_b16_config
from recorders.clip.encoders import image_features, text_features, token_embeddings

EOT = 49407


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds per call, peak GiB allocated) of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: CUDA is not available here, nothing to measure (run this on a CUDA machine)")
        return
    device = torch.device(args.device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    torch.manual_seed(0)
    model = CLIPModel(vit_b16_config()).to(device).eval().requires_grad_(False)
    text_width, vision_width = model.config.text_config.hidden_size, model.config.vision_config.hidden_size
    depth, n_ctx = 9, 2

    ids = torch.randint(1, 49406, (args.classes, 77), device=device)
    ids[:, 0] = 49406
    ids[:, 12:] = EOT
    pixels = torch.randn(args.images, 3, 224, 224, device=device)
    text_prompts = [torch.randn(n_ctx, text_width, device=device, requires_grad=True) for _ in range(depth)]
    vision_prompts = [torch.randn(n_ctx, vision_width, device=device, requires_grad=True) for _ in range(depth)]

    with torch.no_grad():
        text_diff = (
            (
                text_features(model, token_embeddings(model, ids), ids)
                - model.get_text_features(input_ids=ids).pooler_output
            )
            .abs()
            .max()
            .item()
        )
        image_diff = (
            (image_features(model, pixels) - model.get_image_features(pixel_values=pixels).pooler_output)
            .abs()
            .max()
            .item()
        )
    print(
        f"device {torch.cuda.get_device_name(device)}, autocast {dtype}; float32 equivalence max |diff|: "
        f"text {text_diff:.2e}, image {image_diff:.2e}"
    )

    def text_step() -> None:
        with torch.autocast("cuda", dtype=dtype):
            embeds = token_embeddings(model, ids)
            embeds = torch.cat([embeds[:, :1], text_prompts[0].expand(len(ids), -1, -1), embeds[:, 1 + n_ctx :]], 1)
            out = text_features(model, embeds, ids, deep_prompts=text_prompts[1:])
        out.float().square().mean().backward()

    def vision_step() -> None:
        with torch.autocast("cuda", dtype=dtype):
            out = image_features(model, pixels, vision_prompts=vision_prompts)
        out.float().square().mean().backward()

    for name, step, count in (
        ("text", text_step, f"{args.classes} prompts"),
        ("vision", vision_step, f"{args.images} images"),
    ):
        seconds, peak = timed(step, device, args.repeats)
        print(f"{name} path ({count}, fwd+bwd to prompts): {seconds * 1e3:.1f} ms, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
