#!/usr/bin/env python3
"""The PyTorch reference for bench/bench_resnet: the same jobs on the same machine.

    python3 bench/torch_resnet.py --threads 2

Needs Debian's python3-torch and python3-torchvision (for benchmarking only; toptag never depends
on them). Prints lines in bench_resnet's format so the two can be compared side by side:
training 40x40x1 batch 64 (forward, backward, Adam), inference 40x40x1 batch 64, and batch-1
latency at 40x40x1 and 224x224x3, plus peak RSS after training. The model is torchvision's
resnet50 with toptag's head (fc1 2048 -> 1024, ReLU, fc2 1024 -> 2) and a 1- or 3-channel stem.
bench/compare.sh runs it beside toptag and ONNX Runtime (bench/ort_resnet.js) and prints one table.
"""
import argparse
import resource
import statistics
import time

import torch
import torchvision


def model_for(channels):
    m = torchvision.models.resnet50()
    m.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    m.fc = torch.nn.Sequential(torch.nn.Linear(2048, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 2))
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--infer-batches", type=int, default=5)
    p.add_argument("--latency-reps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    print(f"torch      {torch.__version__}, {torch.get_num_threads()} threads, oneDNN "
          f"{'on' if torch.backends.mkldnn.is_available() else 'off'}")

    model = model_for(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(64, 1, 40, 40)
    y = torch.randint(0, 2, (64,))
    model.train()

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(a.train_steps):
        step()
    s = time.perf_counter() - t0
    print(f"train      40x40 batch 64 : {64 * a.train_steps / s:8.1f} images/s  ({1e3 * s / a.train_steps:.0f} ms/step)")
    print(f"peak RSS   after training : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MB")

    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(a.infer_batches):
            model(x)
        s = time.perf_counter() - t0
        print(f"inference  40x40 batch 64 : {64 * a.infer_batches / s:8.1f} images/s")
        model3 = model_for(3).eval()
        for net, channels, size in ((model, 1, 40), (model3, 3, 224)):
            image = torch.rand(1, channels, size, size)
            net(image)
            ms = []
            for _ in range(a.latency_reps):
                t = time.perf_counter()
                net(image)
                ms.append(1e3 * (time.perf_counter() - t))
            print(f"latency    {size}x{size}x{channels} batch 1 : {statistics.median(ms):8.2f} ms median, "
                  f"{min(ms):.2f} ms min")


if __name__ == "__main__":
    main()
