"""motion-blurry: random camera-shake trajectory PSF (Boracchi & Foi 2012, as in DeblurGAN).

Deviations from DeblurGAN's `motion_blur/` code, all deliberate:
- 500 trajectory steps instead of 2000. Per step, the shake perturbs the direction by about
  expl * shake * N(0, 1) radians and the centripetal pull by expl * c * x, so with 4x fewer steps
  the shake is scaled by sqrt(4), the pull and the reversal probability by 4: the same random walk
  in distribution, 4x cheaper.
- Positions in the pull term are measured on DeblurGAN's 60 px scale whatever the length L, so
  the shape statistics do not depend on L (severity only stretches the path).
- The whole path is 2000/500-equivalent long L / f and its first fraction f is rasterised, so the
  blurred path length is L for every f (severity keeps its meaning; small f = straighter).
- The kernel is centred on its centre of mass (no shift between LQ and GT) on the smallest odd
  canvas holding it, instead of a fixed 64 px canvas; no min-max renormalisation of the output.
Convolution happens in linear light (x^2.2), with reflect padding.
"""

import cmath
import math

import numpy as np

from ._common import convolve_reflect, splat_bilinear

N_REFERENCE_STEPS = 2000
N_STEPS = 500
REFERENCE_LENGTH = 60.0
GAMMA = 2.2


def trajectory(rng, length, n_steps=N_STEPS):
    """Complex positions of a constant-speed shake path of total length `length` px."""
    r = N_REFERENCE_STEPS / n_steps
    expl = rng.uniform(0.001, 0.01)
    centripetal = 0.7 * rng.uniform()
    prob_big_shake = 0.2 * rng.uniform()
    gaussian_shake = 10.0 * rng.uniform()
    angle = rng.uniform(0.0, 2.0 * math.pi)
    big = (rng.uniform(size=n_steps) < prob_big_shake * expl * r).tolist()
    big_angle = (rng.uniform(size=n_steps) - 0.5).tolist()
    shake = (rng.standard_normal((n_steps, 2)) * (gaussian_shake * math.sqrt(r))).tolist()

    unit = REFERENCE_LENGTH / (n_steps - 1)       # step on the reference scale
    v = cmath.rect(unit, angle)
    x = 0j
    xs = [x]
    pull = centripetal * r
    for t in range(n_steps - 1):
        dv = expl * (complex(*shake[t]) - pull * x) * unit
        if big[t]:
            dv += 2.0 * v * cmath.exp(1j * (math.pi + big_angle[t]))
        v += dv
        v *= unit / abs(v)
        x += v
        xs.append(x)
    pts = np.asarray(xs) * (length / REFERENCE_LENGTH)
    return pts, {"expl": expl, "centripetal": centripetal, "prob_big_shake": prob_big_shake,
                 "gaussian_shake": gaussian_shake, "init_angle_deg": math.degrees(angle)}


def trajectory_kernel(points):
    """Rasterise points (complex, px) into an odd square PSF centred on its centre of mass."""
    c = points.mean()
    radius = float(np.abs(points - c).max())
    half = int(math.ceil(radius)) + 1
    size = 2 * half + 1
    p = points - c + complex(half, half)
    k = splat_bilinear(p.real, p.imag, size)
    return (k / k.sum()).astype(np.float32)


def sample_params(rng, severity, shape_hw):
    length = 3.0 + severity * 0.15 * min(shape_hw)
    fraction = float(rng.choice([0.1, 0.5, 1.0]))
    pts, traj = trajectory(rng, length / fraction)
    n = max(2, int(round(fraction * len(pts))))
    kernel = trajectory_kernel(pts[:n])
    return {"length": length, "fraction": fraction, **traj, "linear_light": True, "kernel": kernel}


def apply(clean, rng, kernel, linear_light=True, **unused):
    """Blur with `kernel`. In linear light the mean of x^2.2 is kept, so the sRGB mean rises a
    little at high-contrast edges (a few /255 on natural photos), as in real averaged frames."""
    del rng, unused
    if not linear_light:
        return np.clip(convolve_reflect(clean, kernel), 0, 1), {"kernel": kernel}
    lin = np.power(np.clip(clean, 0, 1), GAMMA)
    out = np.power(np.clip(convolve_reflect(lin, kernel), 0, 1), 1.0 / GAMMA)
    return out.astype(np.float32), {"kernel": kernel}


def motion_blurry(clean, rng, severity, **overrides):
    params = sample_params(rng, severity, clean.shape[:2])
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params.pop("kernel")
    params["kernel_size"] = int(maps["kernel"].shape[0])
    params["maps"] = maps
    return out, params
