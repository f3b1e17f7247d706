"""Accuracy of the frame's own noise fit (sidraw.noise_estimate) on the validation photos.

Each of the 32 held-out photos (whole, up to 512 x 512 photosites from the top left) is
unprocessed to a Bayer mosaic and darkened with A7S2 noise (ELD: median read and row noise at the
gain) at K = 0.1, 0.75, 3 and 6 DN/e- and ratios 1, 100 and 300, then fitted as convert fits it.
Printed: the fitted over the true gain, and the fitted over the true variance at the frame's
median signal (what the network is told), as median and 10-90 % range.

    python bench/noise_estimate.py
"""

from __future__ import annotations

import argparse

import numpy as np

from sidraw.train import data as data_mod
from sidraw.train.noise import a7s2_params
from sidraw.train.pairs import make_pair


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512, help="largest crop edge, photosites")
    a = ap.parse_args(argv)
    root = data_mod.data_root()
    _, val = data_mod.split(data_mod.manifest(root))
    photos = data_mod.load_photos(root, val)
    rng = np.random.default_rng(0)
    k_err, var_err = [], []
    for photo in photos:
        srgb = photo.pixels[: a.size, : a.size].astype(np.float32) / 255
        for k in (0.1, 0.75, 3.0, 6.0):
            for ratio in (1.0, 100.0, 300.0):
                noise = a7s2_params(k)
                # make_pair fits the noisy mosaic exactly as training and convert do.
                pair = make_pair(srgb, "bayer", rng, ratio=ratio, noise=noise, exposure=1.0)
                est = pair.estimate
                w = noise.range
                level = float(np.median(pair.clean)) / ratio
                true_var = k / w * level + (noise.sigma_read**2 + 1 / 12) / w**2
                k_err.append(est.gain * w / k)
                var_err.append((est.gain * level + est.read**2) / true_var)
    for name, v in (("gain", k_err), ("variance at the median signal", var_err)):
        q = np.percentile(v, [10, 50, 90])
        print(f"fitted / true {name}: median {q[1]:.3f}, 10-90 % {q[0]:.3f} .. {q[2]:.3f} "
              f"({len(v)} frames)")


if __name__ == "__main__":
    main()
