"""Procedural demo dataset: endoscopy and ultrasound frames with lesion masks, boxes and a manifest.

The frames are caricatures of the real thing, drawn with numpy and OpenCV: pink mucosa with smooth shading,
vessels, specular highlights and an endoscope vignette (white light or narrow band); ultrasound speckle, tissue
layers and depth attenuation in a linear or convex field of view. Labels are per patient: `normal` (no lesion),
`benign` (smooth oval) or `malignant` (irregular outline, heterogeneous texture, posterior shadowing on
ultrasound). The frames of one patient are near-duplicate views of one scene, as frames of a video are.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medcad.atomic import atomic_write_text

LABELS = ("normal", "benign", "malignant")
LABEL_SHARES = (0.40, 0.35, 0.25)
SUBGROUPS = {"endoscopy": ("white_light", "narrow_band"), "ultrasound": ("linear", "convex")}
COLUMNS = ("image", "label", "patient", "domain", "subgroup", "mask", "boxes")
DUPLICATE_SHARE = 0.03

_F32 = np.float32


@dataclass(frozen=True)
class _Patient:
    pid: str
    domain: str
    subgroup: str
    label: str
    index: int


def _counts(n: int, shares: tuple[float, ...]) -> list[int]:
    """Split n into integer counts close to n * shares (largest remainder)."""
    raw = np.asarray(shares) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _plan(n_patients: int, rng: np.random.Generator) -> list[_Patient]:
    """Half the patients per domain; labels ~40/35/25 % and subgroups 50/50 within each domain."""
    rows = []
    for domain, n in zip(SUBGROUPS, _counts(n_patients, (0.5, 0.5)), strict=True):
        labels = [lab for lab, c in zip(LABELS, _counts(n, LABEL_SHARES), strict=True) for _ in range(c)]
        subs = [SUBGROUPS[domain][i % 2] for i in range(n)]
        rows += [(domain, str(s), lab) for s, lab in zip(rng.permutation(subs), labels, strict=True)]
    width = max(3, len(str(n_patients - 1)))
    order = rng.permutation(len(rows))
    return [_Patient(f"p{i:0{width}d}", *rows[j], index=i) for i, j in enumerate(order)]


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field, zero mean, unit std, with about `cells` blobs across."""
    small = rng.standard_normal((cells, cells)).astype(_F32)
    field = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _grid(size: int, cx: float = 0.0, cy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(_F32)
    return xx - cx, yy - cy


def _field_of_view(p: _Patient, size: int, geo: dict) -> tuple[np.ndarray, np.ndarray]:
    """Soft field-of-view mask and normalised radius/depth map, fixed to the camera/probe.  # (H, W) each"""
    if p.domain == "endoscopy":
        dx, dy = _grid(size, size / 2, size / 2)
        r = np.hypot(dx, dy) / geo["radius"]
        fov = np.clip((1 - r) * geo["radius"] / (0.015 * size) + 0.5, 0, 1)
        return fov * (np.abs(dy) < size * geo["crop"]), r
    if p.subgroup == "linear":
        dx, dy = _grid(size)
        fov = (dx >= 0.13 * size) & (dx < 0.87 * size) & (dy >= 0.05 * size) & (dy < 0.96 * size)
        return fov.astype(_F32), np.clip((dy - 0.05 * size) / (0.91 * size), 0, 1)
    r0, r1, apex = 0.28 * size, 1.18 * size, -0.22 * size
    dx, dy = _grid(size, size / 2, apex)
    r, ang = np.hypot(dx, dy), np.abs(np.arctan2(dx, dy))
    fov = (r >= r0) & (r < r1) & (ang < np.deg2rad(geo["half_angle"]))
    return fov.astype(_F32), np.clip((r - r0) / (r1 - r0), 0, 1)


def _lesion(
    rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float, label: str, spikes: float
) -> np.ndarray:
    """Soft lesion mask on a size x size canvas: smooth oval (benign) or lobulated, spiculated (malignant)."""
    dx, dy = _grid(size, *centre)
    rot, aspect = rng.uniform(0, np.pi), rng.uniform(0.65, 1.0)
    u = (dx * np.cos(rot) + dy * np.sin(rot)) * aspect**0.5
    v = (dy * np.cos(rot) - dx * np.sin(rot)) / aspect**0.5
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    edge = 1.0 + 0.04 * np.sin(2 * theta + rng.uniform(0, 6.3))
    if label == "malignant":
        for k in range(2, 7):
            edge += rng.uniform(0.03, 0.12) / k**0.5 * np.sin(k * theta + rng.uniform(0, 6.3))
        for a in rng.uniform(-np.pi, np.pi, rng.integers(4, 10)):
            d = np.angle(np.exp(1j * (theta - a)))
            edge += spikes * rng.uniform(0.4, 1.0) * np.exp(-((d / rng.uniform(0.05, 0.12)) ** 2))
    edge *= min(1.0, 1.15 / float(edge.max()))  # spicules and lobes stay within ~40 % of the frame
    width = size / 96 * (1.5 if label == "benign" else 0.8)
    return np.clip((edge * radius - r) / width + 0.5, 0, 1).astype(_F32)


def _vessels(rng: np.random.Generator, size: int, n_trees: int, scale: float) -> np.ndarray:
    """Branching vessel lines (random walks that fork), 0..1, anti-aliased and slightly blurred."""
    canvas = np.zeros((size, size), np.uint8)
    stack = [(rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 2.6), 0) for _ in range(n_trees)]
    while stack:
        pt, ang, thick, depth = stack.pop()
        pts = [pt.copy()]
        for _ in range(int(rng.integers(8, 22))):
            ang += rng.normal(0, 0.35)
            pt = pt + size / 28 * np.array([np.cos(ang), np.sin(ang)])
            pts.append(pt.copy())
            if depth < 3 and rng.random() < 0.12:
                stack.append((pt.copy(), ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), thick * 0.7, depth + 1))
        line = (np.asarray(pts) * 16).astype(np.int32)
        t = max(1, round(thick * scale))
        cv2.polylines(canvas, [line], False, int(rng.integers(110, 256)), t, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(canvas.astype(_F32) / 255, (0, 0), 0.5 * scale + 0.3)


def _endoscopy_scene(rng: np.random.Generator, c: int, p: _Patient, m: np.ndarray, look: dict) -> np.ndarray:
    """Mucosa with shading, vessels, highlights and the (alpha-blended) lesion.  # (C, C, 3) float"""
    s, nbi = c / 120, p.subgroup == "narrow_band"
    base = np.array((0.40, 0.62, 0.58) if nbi else (0.82, 0.42, 0.37), _F32) * rng.uniform(0.9, 1.1, 3).astype(_F32)
    vcol = np.array((0.75, 0.85, 0.70) if nbi else (0.25, 0.55, 0.50), _F32)
    shade = np.clip(1 + 0.16 * _noise(rng, c, 3) + 0.07 * _noise(rng, c, 7), 0.5, 1.5)
    tex = shade * (1 + 0.03 * _noise(rng, c, 30))
    vess = _vessels(rng, c, int(rng.integers(4, 9)), s) * rng.uniform(0.6, 1.0)
    img = base * tex[..., None] * (1 - vess[..., None] * vcol)
    if p.label != "normal":
        bump = cv2.GaussianBlur(m, (0, 0), 4 * s)
        if p.label == "benign":
            col, surf, lv = base * np.array((1.12, 1.4, 1.35), _F32), bump, 0.3 * vess
        else:
            col = base * (np.array((0.55, 0.5, 0.4) if nbi else (0.78, 0.42, 0.45), _F32))
            surf = cv2.GaussianBlur(m * (1 + 0.6 * _noise(rng, c, c // 6)), (0, 0), 1.2 * s)
            lv = np.clip(_vessels(rng, c, 14, s) * 1.4, 0, 1)
        gx, gy = cv2.Sobel(surf, cv2.CV_32F, 1, 0), cv2.Sobel(surf, cv2.CV_32F, 0, 1)
        light = np.clip(1 + 1.1 * (gx + gy) / (np.abs(gx).max() + np.abs(gy).max() + 1e-6), 0.75, 1.4)
        hetero = 1 + (0.05 if p.label == "benign" else 0.22) * _noise(rng, c, c // 8)
        les = col * (tex * light * hetero)[..., None] * (1 - lv[..., None] * vcol)
        if p.label == "benign":
            ys, xs = np.nonzero(m > 0.5)
            hx, hy = xs.mean() - 0.35 * np.ptp(xs) / 2, ys.mean() - 0.35 * np.ptp(ys) / 2
            dx, dy = _grid(c, hx, hy)
            les += 0.3 * np.exp(-(dx**2 + dy**2) / (2 * (0.06 * np.ptp(xs) + 0.5) ** 2))[..., None]
        a = cv2.GaussianBlur(m, (0, 0), look["lesion_blur"] * s) * look["alpha"]
        img = img * (1 - a[..., None]) + les * a[..., None]
        img *= 1 - 0.35 * look["alpha"] * cv2.GaussianBlur(4 * m * (1 - m), (0, 0), s)[..., None]  # outline
    spec = np.zeros((c, c), _F32)
    for _ in range(int(rng.integers(2, 8))):
        ax = tuple(int(v) for v in rng.uniform(0.3, 2.2, 2) * s + 0.5)
        ctr = tuple(int(v) for v in rng.uniform(0, c, 2))
        cv2.ellipse(spec, ctr, ax, rng.uniform(0, 180), 0, 360, float(rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA)
    return img + cv2.GaussianBlur(spec, (0, 0), 0.7 * s)[..., None]


def _ultrasound_scene(rng: np.random.Generator, c: int, p: _Patient, m: np.ndarray, look: dict) -> np.ndarray:
    """Echogenicity x speckle: wavy tissue layers, bright interfaces, hypo-echoic lesion.  # (C, C) float"""
    s, x, y = c / 120, np.arange(c, dtype=_F32) / c, np.arange(c, dtype=_F32)[:, None] / c
    bounds = np.sort(rng.uniform(0.08, 0.9, int(rng.integers(4, 8))))
    echo = np.full((c, c), rng.uniform(0.3, 0.7), _F32)
    for b in bounds:
        yb = b + rng.uniform(0.01, 0.05) * np.sin(2 * np.pi * x * rng.uniform(0.3, 1.5) + rng.uniform(0, 6.3))
        echo = np.where(y >= yb, _F32(rng.uniform(0.25, 0.9)), echo)
        echo += rng.uniform(0.3, 0.9) * np.exp(-(((y - yb) * c / (0.8 * s)) ** 2))
    echo = cv2.GaussianBlur(echo, (0, 0), s) * (1 + 0.2 * _noise(rng, c, 5))
    if p.label != "normal":
        a = cv2.GaussianBlur(m, (0, 0), look["lesion_blur"] * s) * look["alpha"]
        col = np.cumsum(m, axis=0)
        below = col / np.maximum(col[-1:], 1e-3) * (1 - m) * np.clip(col[-1:] / (3 * s), 0, 1)
        below = cv2.GaussianBlur(below, (0, 0), 1.5 * s)
        if p.label == "benign":
            inner = np.full_like(echo, rng.uniform(0.03, 0.14)) * (1 + 0.05 * _noise(rng, c, 12))
            fade = np.exp(-np.cumsum(below, axis=0) / (0.35 * c))
            echo *= 1 + rng.uniform(0.3, 0.7) * look["alpha"] * below * fade
            echo += 0.6 * look["alpha"] * (4 * m * (1 - m))  # thin echogenic capsule
        else:
            inner = rng.uniform(0.1, 0.3) * np.clip(1 + 0.6 * _noise(rng, c, c // 7), 0.2, 2)
            echo *= 1 - rng.uniform(0.4, 0.7) * look["alpha"] * below
            inner += (rng.random((c, c)) < 0.01) * m * rng.uniform(0.5, 1.5)  # echogenic foci
        echo = echo * (1 - a) + inner * a
    speckle = rng.rayleigh(1.0, (c, c)).astype(_F32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=0.9 * s, sigmaY=0.45 * s)
    return echo * (speckle / speckle.mean()) ** 1.5


def _frame_warp(rng: np.random.Generator, c: int, size: int, rotate: float) -> np.ndarray:
    """Affine map from the scene canvas to the frame: small shift, rotation and zoom."""
    m = cv2.getRotationMatrix2D((c / 2, c / 2), rng.uniform(-rotate, rotate), rng.uniform(0.96, 1.04))
    m[:, 2] += (size - c) / 2 + rng.uniform(-0.035, 0.035, 2) * size
    return m


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop specks (components smaller than 0.1 % of the frame) from a 0/255 mask."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= max(4, mask.size // 1000)]
    return np.where(np.isin(lab, keep), 255, 0).astype(np.uint8)


def _boxes(mask: np.ndarray, label: str) -> list[list]:
    """One [xmin, ymin, xmax, ymax, label] per connected component (xmax, ymax exclusive, like COCO x + w)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [[int(x), int(y), int(x + w), int(y + h), label] for x, y, w, h, _ in stats[1:n]]


def _render_patient(p: _Patient, n_frames: int, size: int, seed: int, dups: set[int]) -> list[tuple]:
    """All frames of one patient: [(image uint8, mask uint8 0/255), ...]."""
    rng = np.random.default_rng((seed, p.index))
    c, s = size + 2 * int(np.ceil(0.15 * size)), size / 96
    endo = p.domain == "endoscopy"
    geo = {"radius": rng.uniform(0.46, 0.6) * size, "crop": rng.uniform(0.42, 0.5), "half_angle": rng.uniform(28, 38)}
    fov, depth = _field_of_view(p, size, geo)
    hard = rng.random() < 0.15  # low-contrast, small, blurred lesions
    look = {"alpha": rng.uniform(0.35, 0.55) if hard else rng.uniform(0.6, 1.0), "lesion_blur": rng.uniform(0.5, 2)}
    lesion = np.zeros((c, c), _F32)
    if p.label != "normal":
        radius = size * (rng.uniform(0.06, 0.1) if hard else rng.uniform(0.07, 0.175))
        reach = radius * (1.35 if p.label == "malignant" else 1.05) + 0.09 * size
        dist = cv2.distanceTransform((fov > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
        ys, xs = np.nonzero(dist >= min(reach, dist.max() - 1))
        k = rng.integers(len(xs))
        centre = (xs[k] + (c - size) / 2, ys[k] + (c - size) / 2)
        lesion = _lesion(rng, c, centre, radius, p.label, 0.2 if endo else 0.45)
    scene = (_endoscopy_scene if endo else _ultrasound_scene)(rng, c, p, lesion, look)
    blur, atten = rng.uniform(0.2, 1.0) * s, rng.uniform(0.6, 1.6)
    frames: list[tuple] = []
    for k in range(n_frames):
        if k in dups and frames:
            frames.append(frames[-1])
            continue
        warp = _frame_warp(rng, c, size, 8.0 if endo else 2.5)
        img = cv2.warpAffine(scene, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        sigma = blur + (rng.uniform(0.8, 1.6) * s if rng.random() < 0.15 else 0.0)
        img = cv2.GaussianBlur(img, (0, 0), sigma) * rng.uniform(0.9, 1.1)
        if endo:
            img = img * rng.uniform(0.96, 1.04, 3).astype(_F32) * (1 - 0.45 * np.clip(depth, 0, 1) ** 2)[..., None]
            img = img * fov[..., None] + rng.normal(0, 0.012, img.shape).astype(_F32)
        else:
            fresh = cv2.GaussianBlur(rng.rayleigh(1.0, (size, size)).astype(_F32), (0, 0), 0.6 * s)
            img = img * (fresh / fresh.mean()) ** 0.5 * np.exp(-atten * depth) * (1 + 0.5 * np.exp(-depth * 40))
            img = np.clip(img / 1.4, 0, 1) ** 0.8 * fov
            img[np.round(np.arange(0.1, 0.95, 0.1) * size).astype(int), int(0.95 * size)] = 0.8  # depth scale dots
        mask = cv2.warpAffine(lesion, warp, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        mask = _clean_mask(((mask > 0.5) & (fov > 0.5)).astype(np.uint8) * 255)
        frames.append((np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mask))
    return frames


def generate_synthetic(
    out_dir: str | Path, *, n_patients: int = 40, frames_per_patient: int = 6, size: int = 96, seed: int = 0
) -> Path:
    """Write a synthetic endoscopy + ultrasound dataset with masks, boxes and a manifest.

    Args:
        out_dir: folder to write `images/`, `masks/` and `manifest.csv` into (created if needed).
        n_patients: patients, half per domain; labels normal/benign/malignant ~40/35/25 % per domain.
        frames_per_patient: near-duplicate frames per patient (~3 % of all frames are exact copies).
        size: frame width and height in pixels.
        seed: random seed; the same seed gives byte-identical files.

    Returns:
        Path of `out_dir/manifest.csv` (columns image, label, patient, domain, subgroup, mask, boxes).
    """
    if n_patients < 1 or frames_per_patient < 1 or size < 32:
        raise ValueError(
            f"need n_patients >= 1, frames_per_patient >= 1, size >= 32; got {n_patients}, {frames_per_patient}, {size}"
        )
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng((seed, 2**31))
    patients = _plan(n_patients, rng)
    slots = [(i, k) for i in range(n_patients) for k in range(1, frames_per_patient)]
    n_dup = min(len(slots), round(DUPLICATE_SHARE * n_patients * frames_per_patient))
    dups = {slots[j] for j in rng.choice(len(slots), n_dup, replace=False)} if slots else set()
    rows = []
    for p in patients:
        frames = _render_patient(p, frames_per_patient, size, seed, {k for i, k in dups if i == p.index})
        for k, (img, mask) in enumerate(frames):
            name = f"{p.pid}_{k}.png"
            cv2.imwrite(str(out / "images" / name), img[..., ::-1] if img.ndim == 3 else img)
            cv2.imwrite(str(out / "masks" / name), mask)
            boxes = _boxes(mask, p.label) if p.label != "normal" else []
            rows.append([f"images/{name}", p.label, p.pid, p.domain, p.subgroup, f"masks/{name}", json.dumps(boxes)])
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", text.getvalue())
    return out / "manifest.csv"


def _kidney_scene(rng: np.random.Generator, label: str, big: int) -> np.ndarray:
    """Echogenicity (big, big) float32 of one plane of a patient's anatomy, for `generate_ultrasound_sweeps`."""
    v = np.arange(big, dtype=_F32)[:, None] / big
    echo = np.full((big, big), rng.uniform(0.3, 0.6), _F32)
    for b in np.sort(rng.uniform(0.05, 0.95, int(rng.integers(4, 8)))):
        yb = b + 0.04 * np.sin(2 * np.pi * np.arange(big) / big * rng.uniform(0.5, 2) + rng.uniform(0, 6.3))
        echo = np.where(v >= yb, _F32(rng.uniform(0.2, 0.8)), echo)
    cx, cy = rng.uniform(0.35, 0.65, 2) * big
    ax = (int(rng.uniform(0.18, 0.3) * big), int(rng.uniform(0.1, 0.18) * big))
    tilt = rng.uniform(-30, 30)
    cv2.ellipse(echo, (int(cx), int(cy)), ax, tilt, 0, 360, 0.95, max(2, big // 60), cv2.LINE_AA)  # capsule
    cv2.ellipse(echo, (int(cx), int(cy)), (ax[0] - big // 30, ax[1] - big // 30), tilt, 0, 360, 0.25, -1)
    for _ in range(int(rng.integers(3, 6))):  # pyramids / sinus fat
        p = (int(cx + rng.uniform(-0.6, 0.6) * ax[0]), int(cy + rng.uniform(-0.5, 0.5) * ax[1]))
        cv2.circle(echo, p, int(rng.uniform(0.15, 0.3) * ax[1]), float(rng.uniform(0.05, 0.7)), -1, cv2.LINE_AA)
    if label == "abnormal":  # an anechoic cyst with posterior enhancement
        c = (int(cx + rng.uniform(-0.4, 0.4) * ax[0]), int(cy))
        cv2.ellipse(echo, (c[0], c[1] + ax[1] // 2), (ax[1] // 3, ax[1]), 0, 0, 180, 0.9, -1)
        cv2.circle(echo, c, int(0.45 * ax[1]), 0.02, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(echo, (0, 0), big / 150) * (1 + 0.15 * _noise(rng, big, 6))


def generate_ultrasound_sweeps(
    out_dir: str | Path,
    *,
    n_patients: int = 10,
    frames_per_patient: int = 60,
    width: int = 192,
    height: int = 144,
    seed: int = 0,
) -> Path:
    """Write probe sweeps of several patients under one scanner interface: a test set for duplicate grouping.

    Each patient is one sweep: a scene (tissue layers, a kidney-like oval with a bright rim, sometimes a cyst)
    seen through a sector that rocks slowly across it (periods of 240-360 frames, at most about 1 % of the frame
    width per frame) while the anatomy morphs out of plane and the speckle decorrelates, so consecutive frames
    are near duplicates and distant ones are not; the first and last frames are nearly blank (probe lifted).
    Every frame shares the interface: black surround, the same sector, the same depth-gain profile, burned-in
    text, a grey bar and a colour bar, and a frame counter that changes.

    Args:
        out_dir: folder to write `images/<patient>/<frame>.png` and `manifest.csv` (image, label, patient) into.
        n_patients: patients (one sweep each); labels alternate normal / abnormal (a cyst in the oval).
        frames_per_patient: frames per sweep (at least 8).
        width: frame width in pixels (at least 96).
        height: frame height in pixels (at least 72).
        seed: random seed; the same seed gives byte-identical files.

    Returns:
        Path of `out_dir/manifest.csv`.
    """
    if n_patients < 1 or frames_per_patient < 8 or width < 96 or height < 72:
        raise ValueError(
            "need n_patients >= 1, frames_per_patient >= 8, width >= 96, height >= 72; "
            f"got {n_patients}, {frames_per_patient}, {width}, {height}"
        )
    out = Path(out_dir)
    h, w = height, width
    fy, fx = int(0.9 * h), int(0.62 * w)  # the sector's bounding box (rows, columns)
    x0 = (w - fx) // 2
    yy, xx = np.mgrid[:fy, :fx].astype(_F32)
    r, ang = np.hypot(xx - fx / 2, yy + 0.15 * fy), np.degrees(np.arctan2(xx - fx / 2, yy + 0.15 * fy))
    sector = ((r > 0.2 * fy) & (r < 1.13 * fy) & (np.abs(ang) < 36)).astype(_F32)
    depth = np.clip((r - 0.2 * fy) / (0.93 * fy), 0, 1)
    gain = (1.25 - 0.8 * depth) * (1 + 0.35 * np.exp(-depth * 25))  # shared depth-gain profile  # (fy, fx)
    ui = np.zeros((h, w, 3), np.uint8)  # the interface: everything but the sector's content
    for text, (tx, ty) in (("MEDCAD US  C5-2  ABD", (4, 10)), ("GN 52 FR 24", (int(0.72 * w), 10))):
        cv2.putText(ui, text, (tx, ty), cv2.FONT_HERSHEY_PLAIN, 0.6, (230, 230, 230), 1, cv2.LINE_AA)
    ramp = np.linspace(255, 0, int(0.6 * h)).astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(ramp, 6, axis=1), cv2.COLORMAP_JET)[..., ::-1]  # (0.6 h, 6, 3) RGB
    ui[int(0.2 * h) : int(0.2 * h) + len(ramp), w - 12 : w - 6] = bar
    ui[int(0.2 * h) : int(0.2 * h) + len(ramp), 4:8] = np.repeat(ramp, 4, axis=1)[..., None]
    for k in range(1, 9):  # depth marks beside the sector
        ui[int(k * fy / 9) + int(0.05 * h), x0 + fx + 2 : x0 + fx + 5] = 200
    big = 2 * max(fy, fx)  # scene canvas: the sector slides across it

    rows = []
    n = frames_per_patient
    for p in range(n_patients):
        rng = np.random.default_rng((seed, p, 7))
        pid, label = f"pt{p:02d}", ("normal", "abnormal")[p % 2]
        planes = np.stack([_kidney_scene(rng, label, big) for _ in range(3)])  # the anatomy morphs through them
        centre, reach = rng.uniform(0.4, 0.6, 2) * (big - np.array([fy, fx])), 0.35 * (big - np.array([fy, fx]))
        periods, phases = rng.uniform(240, 360, 4), rng.uniform(0, 2 * np.pi, 4)  # frames; the probe rocks slowly
        speckle = rng.rayleigh(1.0, (big, big)).astype(_F32)
        brightness = rng.uniform(0.85, 1.15)
        (out / "images" / pid).mkdir(parents=True, exist_ok=True)
        for t in range(n):
            wave = np.sin(2 * np.pi * t / periods + phases)
            weights = np.exp(3 * np.cos(2 * np.pi * t / periods[3] + phases[3] + np.array([0, 2.1, 4.2])))
            plane = np.tensordot(weights / weights.sum(), planes, axes=1)
            if t % 4 == 0:  # out-of-plane motion: the speckle decorrelates a little every few frames
                speckle = np.sqrt(0.9 * speckle**2 + 0.1 * rng.rayleigh(1.0, (big, big)).astype(_F32) ** 2)
            oy, ox = centre + reach * wave[:2]
            m = cv2.getRotationMatrix2D((fx / 2, 0), 10 * wave[2], 1.0)
            m[:, 2] += (ox, oy)  # frame -> scene coordinates
            view = cv2.warpAffine(plane, m, (fx, fy), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            spk = cv2.warpAffine(speckle, m, (fx, fy), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            spk = cv2.GaussianBlur(spk, (0, 0), sigmaX=1.0, sigmaY=0.5)
            img = view * spk**1.3 * gain * brightness
            contact = min(1.0, min(t, n - 1 - t) / 2)  # probe lifted at both ends of the sweep
            img = img * contact + (1 - contact) * 0.04 * rng.rayleigh(1.0, (fy, fx))
            frame = ui.copy()
            fan = np.clip(img * sector * 210 + 0.5, 0, 255).astype(np.uint8)
            region = frame[int(0.05 * h) : int(0.05 * h) + fy, x0 : x0 + fx]
            region[sector > 0] = fan[sector > 0, None]
            cv2.putText(frame, f"{t:04d}", (4, h - 5), cv2.FONT_HERSHEY_PLAIN, 0.6, (230, 230, 230), 1, cv2.LINE_AA)
            name = f"images/{pid}/{t:04d}.png"
            cv2.imwrite(str(out / name), frame[..., ::-1])
            rows.append([name, label, pid])
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["image", "label", "patient"], *rows])
    return out / "manifest.csv"
