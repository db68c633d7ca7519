"""Exact and near-duplicate images from their fingerprints (`medcad.data.fingerprints`): what the tests compare,
the links and the groups, and the links between two sets (an external test set and a run's images).

Near duplicates are judged on what a frame shows, not on its frame: pixels that
stay the same across many images of one size (a scanner's interface, black surround, burned-in text, colour
bars) are masked out and the hash is taken of the varying content only. Groups are cut so that every pair in
a group is a near-duplicate pair (complete linkage): a chain of look-alike pairs never joins two videos.

A copy mirrored left to right (an augmented export's flip) is compared mirrored back, on whole frames, and linked
by the same hash distance with the thumbnail correlation always required: on BUSI (780 images) and Kvasir-SEG
(1,000) it adds no link; flips of 20 of their images, brightened or not, join their sources' groups (none did).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from medcad.data.fingerprints import STATIC_GRID, THUMB, ImageFingerprint
from medcad.data.manifest import Manifest, label_identity

# Near duplicates: perceptual hashes (64 bits) within PHASH_SURE bits, or within PHASH_MAX bits and a 32x32
# thumbnail that correlates >= CORR_MIN with the other once the mean thumbnail of its kind is subtracted.
# Tuned by eye on BUSI (true pairs up to 14 bits apart) and Kvasir-SEG (unrelated frames from 6 bits apart).
PHASH_SURE = 4
PHASH_MAX = 14
CORR_MIN = 0.9
CORR_SURE_CONTENT = 0.7  # content crops hash more coarsely: a pair within PHASH_SURE bits also needs this
LOW_CONTENT_STD = 4.0  # grey levels (of 255) in the 32x32 thumbnail
# Static regions: among at least STATIC_MIN_IMAGES images of one size, a pixel of the STATIC_GRID thumbnail is
# static when >= STATIC_SHARE of them are within STATIC_TOL grey levels of its median. Varying blobs smaller
# than CONTENT_MIN_PART of the frame (a clock, a frame counter) are masked too. A mask that hides less than
# STATIC_MIN_FRACTION of the frame, or leaves less than CONTENT_MIN_FRACTION, is not used.
STATIC_MIN_IMAGES = 20
STATIC_TOL = 12
STATIC_SHARE = 0.9
STATIC_SAMPLE = 1000
CONTENT_MIN_PART = 0.02
STATIC_MIN_FRACTION = 0.05
CONTENT_MIN_FRACTION = 0.15
BLANK_SHARE = 0.25  # masked content whose grey values vary < this share of its kind's median: probe lifted
NOT_LINKED = 64.0  # the linkage distance of a pair that is not a near duplicate (> any link's hash distance)
REGIONS = ("content", "frame")
LINKAGES = ("average", "complete", "single")


def connected_groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """The groups of items 0..n-1 linked, directly or through others, by `pairs` (union-find): each group's
    items in ascending order, groups of one item left out."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _bits(values: list[int]) -> np.ndarray:
    return np.unpackbits(np.array(values, dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(bool)


def _phash_bits(thumbs: np.ndarray) -> np.ndarray:
    """imagehash's phash of (N, 32, 32) grey thumbnails: the 8x8 lowest DCT frequencies above their median."""
    from scipy.fft import dct

    low = dct(dct(thumbs, axis=1), axis=2)[:, :8, :8].reshape(len(thumbs), 64)
    return low > np.median(low, axis=1, keepdims=True)


def low_content(fp: ImageFingerprint) -> bool:
    """A nearly uniform frame (probe lifted, black frame): its thumbnail's grey values vary by < LOW_CONTENT_STD.

    Such frames look alike whatever the patient, so they are never linked as duplicates (else one blank frame
    per video would chain every video of a dataset into one group); the audit lists them.
    """
    return float(np.frombuffer(fp.thumb, np.uint8).std()) < LOW_CONTENT_STD


MASK_LIKE_SHARE = 0.9  # of an image's grey grid cells at its two extreme values: a mask, not a picture


def mask_like(fp: ImageFingerprint) -> bool:
    """An image that holds two grey values, as a mask does: at least MASK_LIKE_SHARE of its 64 x 64 box-filtered
    grey thumbnail at its darkest or brightest value (a blank frame is `low_content` instead). Measured on 150
    images and 150 masks of each of BUSI and Kvasir-SEG: images 0.000-0.341 (Kvasir's black borders), masks
    0.928-1.000. A mask renamed as an image (`x.jpg` in a class folder) had been trained on as one."""
    g = np.frombuffer(fp.grid, np.uint8)
    if g.size == 0 or int(g.max()) == int(g.min()):
        return False
    return float(np.isin(g, (g.min(), g.max())).mean()) >= MASK_LIKE_SHARE


def content_mask(grids: np.ndarray) -> np.ndarray | None:
    """The varying content of images that share a frame: (N, G, G) uint8 thumbnails -> (G, G) bool, or None
    when they share no static region worth masking (see STATIC_* and CONTENT_*)."""
    import cv2

    grids = grids[:: -(-len(grids) // STATIC_SAMPLE)]  # evenly spaced, at most STATIC_SAMPLE: enough for a median
    med = np.median(grids, axis=0)
    static = (np.abs(grids.astype(np.int16) - med) <= STATIC_TOL).mean(0) >= STATIC_SHARE
    n, lab, stats, _ = cv2.connectedComponentsWithStats((~static).astype(np.uint8), connectivity=8)
    keep = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= CONTENT_MIN_PART * static.size]
    content = np.isin(lab, keep)
    if not CONTENT_MIN_FRACTION <= content.mean() <= 1 - STATIC_MIN_FRACTION:
        return None
    return content


@dataclass(frozen=True)
class Features:
    """What the near-duplicate tests compare, one row per image (unreadable images are blank).

    Two images of the same masked kind are compared on their content (`bits`, `res`); any other pair on their
    whole frames (`frame_bits`, `frame_res`), as before. `kinds` describes each kind of frame whose static
    region was masked: {"size": "WxH" (or "mixed"), "images", "masked_fraction", "blank"}.
    """

    bits: np.ndarray  # (N, 64) bool: perceptual hash of the content
    res: np.ndarray  # (N, THUMB*THUMB) float32: unit-norm content thumbnail less the mean of its kind
    frame_bits: np.ndarray  # (N, 64) bool: perceptual hash of the whole frame
    frame_res: np.ndarray  # (N, THUMB*THUMB) float32: unit-norm thumbnail less the mean of all thumbnails
    kind: np.ndarray  # (N,) int: 1 + index into `kinds`, or 0 (not masked)
    blank: np.ndarray  # (N,) bool: unreadable, or nearly uniform frame or content (never linked)
    kinds: list[dict]
    thumb_bits: np.ndarray | None = None  # (N, 64) bool: the hash of the 32x32 thumbnail, as `mirror_bits` is taken
    mirror_bits: np.ndarray | None = None  # (N, 64) bool: ... of the thumbnail mirrored left to right
    mirror_res: np.ndarray | None = None  # (N, THUMB*THUMB) float32: `frame_res` of the mirrored thumbnail


def _kinds(fps: list[ImageFingerprint | None]) -> list[tuple[str, list[int]]]:
    """Images that may share a frame: each size with >= STATIC_MIN_IMAGES images, then all others together."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, f in enumerate(fps):
        if f is not None and f.grid:
            by_size[(f.width, f.height)].append(i)
    out = [(f"{w}x{h}", g) for (w, h), g in by_size.items() if len(g) >= STATIC_MIN_IMAGES]
    rest = sorted(i for g in by_size.values() if len(g) < STATIC_MIN_IMAGES for i in g)
    return out + ([("mixed", rest)] if len(rest) >= STATIC_MIN_IMAGES else [])


def _unit_residuals(thumbs: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Thumbnails (N, P) less `mean` (default: theirs), less each one's own mean, to unit norm."""
    res = thumbs - (thumbs.mean(0) if mean is None else mean)
    res -= res.mean(1, keepdims=True)
    return res / (np.linalg.norm(res, axis=1, keepdims=True) + 1e-6)


def content_features(fps: list[ImageFingerprint | None], region: str = "content") -> Features:
    """Hashes and thumbnails of what each image shows. With `region="content"`, each kind of frame (`_kinds`)
    whose images share a static region (`content_mask`) has it masked: the rest is cropped to its bounding box,
    masked pixels within it set to the image's mean content, and the crop hashed. `region="frame"` masks
    nothing: every image is compared whole (the grouping before 2026-12-02)."""
    import cv2

    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)}")
    n = len(fps)
    frame_bits = np.zeros((n, 64), bool)
    frame_thumbs = np.zeros((n, THUMB * THUMB), np.float32)
    blank = np.ones(n, bool)
    ok = [i for i, f in enumerate(fps) if f is not None]
    if ok:
        frame_bits[ok] = _bits([fps[i].phash for i in ok])
        frame_thumbs[ok] = np.frombuffer(b"".join(fps[i].thumb for i in ok), np.uint8).reshape(len(ok), -1)
        blank[ok] = frame_thumbs[ok].std(1, dtype=np.float64) < LOW_CONTENT_STD  # low_content, all at once
    frame_res = np.zeros_like(frame_thumbs)
    frame_res[~blank] = _unit_residuals(frame_thumbs[~blank]) if (~blank).any() else 0
    square = frame_thumbs.reshape(n, THUMB, THUMB)
    mirrored = square[:, :, ::-1].reshape(n, -1)
    mirror_res = np.zeros_like(frame_thumbs)
    if (~blank).any():
        mirror_res[~blank] = _unit_residuals(mirrored[~blank], frame_thumbs[~blank].mean(0))
    thumb_bits, mirror_bits = _phash_bits(square), _phash_bits(square[:, :, ::-1])
    bits, res, kind, kinds = frame_bits.copy(), frame_res.copy(), np.zeros(n, int), []
    for size, members in _kinds(fps) if region == "content" else []:
        grids = np.stack([np.frombuffer(fps[i].grid, np.uint8) for i in members])
        content = content_mask(grids.reshape(-1, STATIC_GRID, STATIC_GRID))
        if content is None:
            continue
        ys, xs = np.nonzero(content)
        rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        crops = grids.reshape(-1, STATIC_GRID, STATIC_GRID)[:, rows, cols].astype(np.float32)  # (M, h, w)
        inside = content[rows, cols]
        values = crops[:, inside]  # (M, K) content pixels
        crops[:, ~inside] = values.mean(1, keepdims=True)
        small = np.stack([cv2.resize(c, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for c in crops])
        spread = values.std(1)
        empty = spread < max(LOW_CONTENT_STD, BLANK_SHARE * float(np.median(spread)))
        members = np.array(members)
        blank[members] |= empty
        kind[members] = len(kinds) + 1
        bits[members] = _phash_bits(small)
        keep = ~blank[members]
        if keep.any():
            res[members[keep]] = _unit_residuals(small.reshape(len(members), -1)[keep])
        masked = round(1 - float(content.mean()), 3)
        kinds.append({"size": size, "images": len(members), "masked_fraction": masked, "blank": int(empty.sum())})
    res[blank] = frame_res[blank] = mirror_res[blank] = 0
    return Features(bits, res, frame_bits, frame_res, kind, blank, kinds, thumb_bits, mirror_bits, mirror_res)


@dataclass(frozen=True)
class Link:
    """Two images judged near duplicates: positions i < j, perceptual-hash distance (bits of 64) and the
    correlation of their thumbnails after the mean thumbnail of their kind is subtracted (exact copies: 0 and
    1.0)."""

    i: int
    j: int
    distance: int
    correlation: float


def _linked(dist: np.ndarray, corr: np.ndarray, on_content: np.ndarray | bool = False) -> np.ndarray:
    sure = (dist <= PHASH_SURE) & ((corr >= CORR_SURE_CONTENT) | ~np.asarray(on_content))
    return sure | ((dist <= PHASH_MAX) & (corr >= CORR_MIN))


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return np.rint(a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * a @ b.T)  # Hamming distance via dot products


def _pairwise(
    feats: Features, rows: np.ndarray, cols: np.ndarray, corr: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Hash distances, thumbnail correlations (with `corr`) and whether each pair was compared on content, rows x
    cols: on their content where both are of the same masked kind, else on their whole frames."""
    same = (feats.kind[rows][:, None] == feats.kind[cols][None, :]) & (feats.kind[rows] > 0)[:, None]
    dist = c = None
    if not same.all():  # whole frames
        dist = _hamming(feats.frame_bits[rows], feats.frame_bits[cols])
        c = feats.frame_res[rows] @ feats.frame_res[cols].T if corr else None
    if same.any():  # content
        d = _hamming(feats.bits[rows], feats.bits[cols])
        dist = d if dist is None else np.where(same, d, dist)
        if corr:
            r = feats.res[rows] @ feats.res[cols].T
            c = r if c is None else np.where(same, r, c)
    return dist, c, same


def near_duplicate_links(
    fps: list[ImageFingerprint | None], feats: Features | None = None, between: int | None = None
) -> list[Link]:
    """Links (i < j) between near-duplicate images (see PHASH_SURE / PHASH_MAX / CORR_MIN) on their content
    features (`content_features`); blank images are left out; blockwise, small memory. With `between` = n, only
    the links of an image before n with one from n on (one set against another: n x m comparisons, not
    (n + m)^2 / 2)."""
    feats = content_features(fps) if feats is None else feats
    idx = np.flatnonzero(~feats.blank)
    firsts, cols = (idx, idx) if between is None else (idx[idx < between], idx[idx >= between])
    if not len(firsts) or not len(cols):  # nothing to compare (a set of blank frames): no pair had a distance
        return []
    links = []
    block = 2048
    for start in range(0, len(firsts), block):
        rows = firsts[start : start + block]
        dist, corr, on_content = _pairwise(feats, rows, cols)
        linked = _linked(dist, corr, on_content)
        if feats.mirror_bits is not None:  # a copy mirrored left to right (an augmented export): whole frames,
            # each side mirrored in turn (hash medians and mean thumbnails make the test not quite symmetric)
            m_dist = np.minimum(
                _hamming(feats.thumb_bits[rows], feats.mirror_bits[cols]),
                _hamming(feats.mirror_bits[rows], feats.thumb_bits[cols]),
            )
            m_corr = np.maximum(
                feats.frame_res[rows] @ feats.mirror_res[cols].T, feats.mirror_res[rows] @ feats.frame_res[cols].T
            )
            mirrored = ~linked & (m_dist <= PHASH_MAX) & (m_corr >= CORR_MIN)
            dist, corr, linked = np.where(mirrored, m_dist, dist), np.where(mirrored, m_corr, corr), linked | mirrored
        ii, jj = np.nonzero(linked)
        for a, b in zip(ii, jj, strict=True):
            if rows[a] < cols[b]:
                links.append(Link(int(rows[a]), int(cols[b]), int(dist[a, b]), round(float(corr[a, b]), 3)))
    return links


def duplicate_links(
    fps: list[ImageFingerprint | str],
    near: bool = True,
    feats: Features | None = None,
    region: str = "content",
    between: int | None = None,
) -> list[Link]:
    """Links between exact duplicates (identical pixels) and, with `near`, near duplicates; nearly uniform frames
    (`low_content`, or blank content) are linked to nothing: a black frame says nothing about whose it is. With
    `between` = n, only links of an image before n with one from n on (see `near_duplicate_links`)."""
    clean = [f if isinstance(f, ImageFingerprint) else None for f in fps]
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(clean):
        if f is not None and not low_content(f):
            by_digest[f.digest].append(i)
    if between is None:  # within one set: each image linked to its group's first
        links = [Link(g[0], j, 0, 1.0) for g in by_digest.values() for j in g[1:]]
    else:  # one set against another: every pair across
        groups = by_digest.values()
        links = [Link(i, j, 0, 1.0) for g in groups for i in g if i < between for j in g if j >= between]
    if near:
        found = near_duplicate_links(clean, content_features(clean, region) if feats is None else feats, between)
        exact = {(x.i, x.j) for x in links}
        links += [x for x in found if (x.i, x.j) not in exact]
    return links


def link_groups(n: int, links: list[Link], linkage: str = "average", feats: Features | None = None) -> list[list[int]]:
    """Groups of linked images, each of 2+ positions (sorted), ordered by first position.

    Within each connected component of the links, hierarchical clustering cut at PHASH_MAX: a pair's distance
    is its perceptual-hash distance, and at least PHASH_MAX + 1 when it is not linked (NOT_LINKED without
    `feats`). `average` (default): two groups merge only while their images are, on average, near duplicates
    of each other's; `complete`: every pair within a group is linked; `single`: the connected components (a
    chain of look-alike pairs joins everything on it). Work grows with the size of the components.
    """
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as hierarchy

    if linkage not in LINKAGES:
        raise ValueError(f"linkage {linkage!r} is not one of {', '.join(LINKAGES)}")
    components = connected_groups(n, [(x.i, x.j) for x in links])
    if linkage == "single":
        return sorted(components, key=lambda g: g[0])
    where = {i: (c, k) for c, comp in enumerate(components) for k, i in enumerate(comp)}
    by_comp: dict[int, list[Link]] = defaultdict(list)
    for x in links:
        by_comp[where[x.i][0]].append(x)
    out = []
    for c, comp in enumerate(components):
        if len(comp) == 2:
            out.append(comp)
            continue
        if feats is None:
            d = np.full((len(comp), len(comp)), NOT_LINKED)
        else:
            d = np.maximum(_pairwise(feats, np.array(comp), np.array(comp), corr=False)[0], PHASH_MAX + 1)
        for x in by_comp[c]:
            a, b = where[x.i][1], where[x.j][1]
            d[a, b] = d[b, a] = x.distance
        labels = fcluster(hierarchy(d[np.triu_indices(len(comp), 1)], method=linkage), PHASH_MAX + 0.5, "distance")
        for lab in np.unique(labels):
            members = [comp[k] for k in np.flatnonzero(labels == lab)]
            if len(members) > 1:
                out.append(members)
    return sorted(out, key=lambda g: g[0])


def duplicate_groups(
    fps: list[ImageFingerprint | str], near: bool = True, region: str = "content", linkage: str = "average"
) -> list[list[int]]:
    """Groups of sample indices that are exact duplicates (identical pixels) or, with `near`, near duplicates.

    `region="frame", linkage="single"` is the grouping of medcad before 2026-12-02 (whole-frame hashes, chains).
    """
    clean = [f if isinstance(f, ImageFingerprint) else None for f in fps]
    feats = content_features(clean, region) if near else None
    links = duplicate_links(fps, near, feats=feats)
    return link_groups(len(fps), links, linkage if near else "single", feats)


def _owners(manifest: Manifest) -> tuple[str, list[str]]:
    """Who each image belongs to: its patient id or, without patient ids, its top folder."""
    if manifest.has("patient"):
        return "patients", manifest.table["patient"].tolist()
    return "folders", [k.split("/")[0] if "/" in k else "." for k in manifest.keys]


def _link_rows(manifest: Manifest, links: list[Link]) -> list[dict]:
    keys = manifest.keys
    return [{"a": keys[x.i], "b": keys[x.j], "distance": x.distance, "correlation": x.correlation} for x in links]


def large_groups(
    manifest: Manifest, groups: list[list[int]], links: list[Link], min_fraction: float = 0.2, shown: int = 8
) -> list[dict]:
    """Duplicate groups holding at least `min_fraction` of the images and spanning several patients (or, without
    patient ids, top folders): a collapsed grouping. With them, the links within the group that join different
    patients (folders), weakest first.

    Returns:
        [{"size", "fraction", "spans": {"patients" or "folders": n}, "joining_links": [{"a", "b", "distance",
        "correlation"}], "n_joining_links"}], largest first.
    """
    n = len(manifest)
    unit, owner = _owners(manifest)
    out = []
    for g in sorted(groups, key=len, reverse=True):
        if len(g) < max(3, min_fraction * n):
            break
        members = set(g)
        joining = [x for x in links if x.i in members and x.j in members and owner[x.i] != owner[x.j]]
        if not joining:  # one patient's (or folder's) own frames: grouping them is right
            continue
        joining.sort(key=lambda x: (-x.distance, x.correlation))
        out.append(
            {
                "size": len(g),
                "fraction": round(len(g) / n, 3),
                "spans": {unit: len({owner[i] for i in g})},
                "n_joining_links": len(joining),
                "joining_links": _link_rows(manifest, joining[:shown]),
            }
        )
    return out


def largest_group(manifest: Manifest, groups: list[list[int]], links: list[Link], shown: int = 5) -> dict | None:
    """The largest near-duplicate group and what joined it: whom it spans, the share of its pairs that are
    near duplicates, its weakest links (those that joined it last) and the links that leave it.

    Returns:
        {"size", "fraction", "spans": {"patients" or "folders": n}, "labels": {label: n}, "linked_pairs",
        "pairs", "weakest_links": [{"a", "b", "distance", "correlation"}], "links_to_other_images"}, or None.
    """
    if not groups:
        return None
    g = max(groups, key=len)
    members = set(g)
    unit, owner = _owners(manifest)
    labels = manifest.table["label"].tolist()
    inside = sorted((x for x in links if x.i in members and x.j in members), key=lambda x: (-x.distance, x.correlation))
    label_counts: dict[str, int] = defaultdict(int)
    for i in g:
        label_counts[labels[i]] += 1
    return {
        "size": len(g),
        "fraction": round(len(g) / len(manifest), 3),
        "spans": {unit: len({owner[i] for i in g})},
        "labels": dict(label_counts),
        "linked_pairs": len(inside),
        "pairs": len(g) * (len(g) - 1) // 2,
        "weakest_links": _link_rows(manifest, inside[:shown]),
        "links_to_other_images": sum((x.i in members) != (x.j in members) for x in links),
    }


def cross_label(groups: list[list[int]], links: list[Link], labels: list[str]) -> list[list[int]]:
    """Near duplicates under different labels: the groups that hold several labels, then each link between two
    differently labelled images that the grouping put in different groups (so none is missed). Labels compare by
    `label_identity` (a finding list in another order is the same label)."""
    same = [label_identity(v) for v in labels]
    out = [g for g in groups if len({same[i] for i in g}) > 1]
    gid = {i: k for k, g in enumerate(groups) for i in g}
    out += [[x.i, x.j] for x in links if same[x.i] != same[x.j] and gid.get(x.i, -1) != gid.get(x.j, -2)]
    return out
