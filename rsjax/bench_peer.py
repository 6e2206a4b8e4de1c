"""The PyTorch peer timed beside rsjax (imported only by ``rsjax.bench --peer=torch``).

What a PyTorch user would run: torchvision ResNet, channels_last, bf16 autocast, optionally
torch.compile; SimCLR-style step (two views, NT-Xent at tau 0.1, SGD momentum 0.9) on random
input. images/s counts both views (2 x batch per step).
"""

from __future__ import annotations

import time


def torch_simclr_step(*, arch: str, batch_size: int, image_size: int, in_channels: int = 3, steps: int = 20,
                      warmup: int = 5, compile_: bool = True) -> dict:
    try:
        import torch
        import torchvision
    except Exception as e:  # noqa: BLE001
        return {"error": f"torch/torchvision unavailable: {e!r}"[:300]}
    if not torch.cuda.is_available():
        return {"error": "no CUDA device for the torch peer"}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    m = getattr(torchvision.models, arch)(num_classes=128)
    if in_channels != 3:
        m.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    m = m.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    n = batch_size
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).cuda()
    eye = torch.eye(2 * n, device="cuda", dtype=torch.bool)

    def step(x1, x2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = torch.cat([m(x1), m(x2)]).float()
        z = torch.nn.functional.normalize(z, dim=1)
        sim = (z @ z.t() / 0.1).masked_fill(eye, -1e9)
        loss = torch.nn.functional.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compile_ else step
    x1 = torch.randn(n, in_channels, image_size, image_size, device="cuda").to(memory_format=torch.channels_last)
    x2 = torch.randn(n, in_channels, image_size, image_size, device="cuda").to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    fn(x1, x2)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn(x1, x2)
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn(x1, x2)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    return {"framework": "torch " + torch.__version__, "mode": "compiled" if compile_ else "eager",
            "images_per_s": 2 * n / med, "step_ms_median": 1e3 * med, "first_call_s": first,
            "device": torch.cuda.get_device_name()}
