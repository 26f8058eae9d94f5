"""Certification of patch robustness (§3.1) for the spatial sum aggregator g_Σ.

An image with label cₜ has region scores s(i, j, c) ∈ [0, 1] for every output position (i, j)
and class c, and g_Σ predicts the class with the largest sum Σᵢⱼ s(i, j, c). Let ::

    Δ(i, j, c) = s(i, j, cₜ) − s(i, j, c)

A patch at position l can change only the scores in R(l), the outputs whose receptive fields
overlap it (#R(l) of them), and each of those by at most 1 per class. So the prediction
cannot change if ::

    3.2, per position:  Σ_{(i,j) ∉ R(l)} Δ(i, j, c) > #R(l)   for all l and c ≠ cₜ
    3.3, global:        Σ_{(i,j)} Δ(i, j, c) > 2 R_max         for all c ≠ cₜ

where R_max = max over l of #R(l). Each implies Condition 3.1 (the robustness of g_Σ's
prediction), and 3.3 implies 3.2. The sums over R(l) are taken for all patch positions at once
from a summed-area table (Crow, 1984), on the scores' device. Both hold for any scores in
[0, 1] (sigmoid and softmax heads), not only {0, 1}: the proof uses only 0 ≤ s ≤ 1.
Inequalities are strict: a tie is neither correct nor certified.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch

# Differences within TIE_TOL * (number of region scores) count as ties. Sums run in float64,
# whose rounding error on <= 10^6 terms in [-1, 1] is far below this; for {0, 1} scores all
# sums are integers, so the tolerance changes nothing there.
TIE_TOL = 1e-9


def _pair(v, name):
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return v


def _check_rf(rf):
    rf = _pair(rf, "rf")
    if any(r % 2 == 0 for r in rf):
        raise ValueError(f"receptive field must be odd (centred windows), got {rf}")
    return rf


def affected_range(n_in: int, n_out: int, patch: int, rf: int, stride: int):
    """R(l) along one axis (§3.2): for every patch start a ∈ [0, n_in − patch], the first and last
    output index i whose window [i·stride − r, i·stride + r], r = (rf − 1)/2, meets the patch's
    pixels [a, a + patch − 1], clipped to [0, n_out − 1].

    >>> first, last = affected_range(n_in=8, n_out=8, patch=2, rf=3, stride=1)
    >>> first.tolist(), last.tolist()
    ([0, 0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7, 7])
    """
    r = (rf - 1) // 2
    a = torch.arange(n_in - patch + 1)
    first = torch.div(a - r + stride - 1, stride, rounding_mode="floor").clamp(0, n_out - 1)
    last = torch.div(a + patch - 1 + r, stride, rounding_mode="floor").clamp(0, n_out - 1)
    # if a patch touches no output at all (only possible with a too small output), #R(l) = 0
    empty = (a + patch - 1 + r) < 0
    return first, torch.where(empty, first - 1, last)


@dataclass
class Certificate:
    """What :func:`certify` proves, per image.

    * ``correct`` (B,) bool: g_Σ predicts the label, Σᵢⱼ s(i, j, cₜ) > Σᵢⱼ s(i, j, c) for every c ≠ cₜ;
    * ``certified`` (B,) bool: Condition 3.2 holds (implies ``correct``);
    * ``certified_global`` (B,) bool: Condition 3.3 holds (implies ``certified``);
    * ``margin`` (B,) float64: min over l and c ≠ cₜ of Σ_{(i,j) ∉ R(l)} Δ(i, j, c) − #R(l),
      positive exactly where Condition 3.2 holds;
    * ``r_max``: R_max = max over l of #R(l);
    * ``target`` (B,): c*, the class of that minimum (the target of App. A.2's attack);
    * ``row``, ``col`` (B,): l*, the top-left pixel of the patch position of that minimum.
    """

    correct: torch.Tensor
    certified: torch.Tensor
    certified_global: torch.Tensor
    margin: torch.Tensor
    r_max: int
    target: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    def summary(self) -> dict:
        """n, and the clean, certified (Condition 3.2) and certified-global (3.3) accuracies."""
        n = len(self.correct)
        return {"n": n, "clean_accuracy": self.correct.float().mean().item(),
                "certified_accuracy": self.certified.float().mean().item(),
                "certified_global_accuracy": self.certified_global.float().mean().item()}


class _Geometry:
    def __init__(self, shape, patch, rf, stride, image_size):
        _, _, self.h_out, self.w_out = shape
        self.patch = _pair(patch, "patch")
        self.rf = _check_rf(rf)
        self.stride = _pair(stride, "stride")
        self.image_size = _pair(image_size, "image_size") if image_size is not None else (
            self.h_out * self.stride[0], self.w_out * self.stride[1])
        ph, pw = self.patch
        if ph > self.image_size[0] or pw > self.image_size[1]:
            raise ValueError(f"patch {pw}x{ph} (width x height) is larger than the image "
                             f"{self.image_size[1]}x{self.image_size[0]}")


def _region_ranges(geo: _Geometry, device):
    r0, r1 = affected_range(geo.image_size[0], geo.h_out, geo.patch[0], geo.rf[0], geo.stride[0])
    c0, c1 = affected_range(geo.image_size[1], geo.w_out, geo.patch[1], geo.rf[1], geo.stride[1])
    return [t.to(device) for t in (r0, r1, c0, c1)]


def summed_area(delta: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row and column: P[..., i, j] = Σ_{i' < i, j' < j} delta[..., i', j'],
    in float64, so that any rectangle's sum is four lookups (:func:`region_sums`)."""
    P = delta.to(torch.float64).cumsum(-1).cumsum(-2)
    return torch.nn.functional.pad(P, (1, 0, 1, 0))


def region_sums(P: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
    """Σ_{(i,j) ∈ R(l)} of the table's values for every patch position l = (row start, column
    start), from the summed-area table ``P`` and :func:`affected_range`'s bounds: (..., L_rows, L_cols)."""
    rows_hi, rows_lo = P.index_select(-2, r1 + 1), P.index_select(-2, r0)
    return (rows_hi.index_select(-1, c1 + 1) - rows_hi.index_select(-1, c0)
            - rows_lo.index_select(-1, c1 + 1) + rows_lo.index_select(-1, c0))


def _check_scores(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate region scores (B, C, H, W) and labels (B,); the labels as long on the scores' device."""
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, C, H, W), got shape {tuple(scores.shape)}")
    labels = labels.to(scores.device).long()
    if labels.shape != (len(scores),):
        raise ValueError(f"labels must have shape ({len(scores)},), got {tuple(labels.shape)}")
    return labels


class ScoreMaps:
    """The pieces of §3.1 that do not depend on the patch shape: Δ, its summed-area table and the
    global sums Σᵢⱼ Δ(i, j, c). Build once per batch, then :meth:`certify` each patch shape cheaply.

    Example::

        maps = ScoreMaps(scores, labels)                  # scores (B, C, H, W) in [0, 1]
        c5, c24 = maps.certify(5, rf=7), maps.certify((1, 24), rf=7)
    """

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor):
        labels = _check_scores(scores, labels)
        B, C, H, W = scores.shape
        s = scores.to(torch.float64)
        true = s.gather(1, labels.view(B, 1, 1, 1).expand(B, 1, H, W))
        delta = true - s                                       # Δ_{i,j,c}; zero for c = c_t
        self.shape, self.labels = scores.shape, labels
        self.is_true = torch.nn.functional.one_hot(labels, C).bool()  # (B, C)
        self.P = summed_area(delta)                            # (B, C, H+1, W+1)
        self.total = self.P[:, :, -1, -1]                      # Σ_{i,j} Δ_{i,j,c}
        self.tol = TIE_TOL * H * W
        other = self.total.masked_fill(self.is_true, float("inf"))
        self.min_total = other.min(1).values                   # min_{c != c_t} Σ Δ
        self.correct = self.min_total > self.tol

    def worst_case(self, patch, rf, stride=1, image_size=None, chunk_elems: int = 1 << 25):
        """Condition 3.2's quantity m(l, c) = Σ_{(i,j) ∉ R(l)} Δ(i, j, c) − #R(l), minimised over
        every patch position l and class c ≠ cₜ.

        Returns (margin (B,) float64, c* (B,), row* (B,), col* (B,), the table of #R(l) (L_r, L_c)),
        where (row*, col*) is the top-left input pixel of the minimising patch position l*.
        Classes are processed in chunks so that memory stays bounded for 1,000 classes.
        """
        geo = _Geometry(self.shape, patch, rf, stride, image_size)
        r0, r1, c0, c1 = _region_ranges(geo, self.P.device)
        area = ((r1 - r0 + 1)[:, None] * (c1 - c0 + 1)[None, :]).to(torch.float64)
        B, C = self.total.shape
        L = area.numel()
        step = max(1, chunk_elems // max(1, B * L))
        best = torch.full((B,), float("inf"), dtype=torch.float64, device=self.P.device)
        arg = torch.zeros(B, dtype=torch.long, device=self.P.device)
        for k in range(0, C, step):
            inside = region_sums(self.P[:, k:k + step], r0, r1, c0, c1)   # Σ_{∈R(l)} Δ_c
            m = self.total[:, k:k + step, None, None] - inside - area
            m = m.masked_fill(self.is_true[:, k:k + step, None, None], float("inf"))
            val, idx = m.flatten(1).min(1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + k * L, arg)
        cls, pos = arg // L, arg % L
        return best, cls, pos // area.shape[1], pos % area.shape[1], area

    def certify(self, patch, rf, stride=1, image_size=None) -> Certificate:
        """The :class:`Certificate` against a ``patch`` (int, or (h, w)) of a model with receptive
        field ``rf`` and output ``stride`` (see :func:`certify`)."""
        margin, target, row, col, area = self.worst_case(patch, rf, stride, image_size)
        r_max = int(area.max().item())
        return Certificate(
            correct=self.correct,
            certified=self.correct & (margin > self.tol),
            certified_global=self.correct & (self.min_total > 2 * r_max + self.tol),
            margin=margin, r_max=r_max, target=target, row=row, col=col)


def certify(scores: torch.Tensor, labels: torch.Tensor, patch, rf, stride=1,
            image_size=None) -> Certificate:
    """Certify g_Σ's prediction against a patch at every position (Conditions 3.2 and 3.3, §3.1).

    Args:
        scores: region scores (B, C, H_out, W_out) in [0, 1], e.g. from :func:`~bagcert_lib.runtime.region_scores`.
        labels: (B,) the classes to certify.
        patch: the patch, an int (square) or (h, w) in pixels.
        rf, stride: the model's receptive field (odd) and output stride, ints or (h, w) pairs;
            a :class:`~bagcert_lib.model.RegionScorer` has both as attributes.
        image_size: the input's (H, W); default (H_out · stride, W_out · stride).

    Returns:
        a :class:`Certificate`: per image ``correct``, ``certified`` (Condition 3.2),
        ``certified_global`` (3.3), and the weakest patch position l* and class c*.

    Example::

        model, cfg = load_pretrained("scaling-w64-e48-rf7-m0.5-heaviside-s0-seed0")
        scores = region_scores(model, images, head=cfg.head)           # images (B, 3, 32, 32) in [0, 1]
        cert = certify(scores, labels, patch=5, rf=model.receptive_field, stride=model.stride)
        cert.certified.float().mean()                                  # certified accuracy, 5×5
    """
    return ScoreMaps(scores, labels).certify(patch, rf, stride, image_size)


class CertifiedCounter:
    """Counts of certified samples for many patch shapes over a stream of batches (§3.1): the same
    answers as :meth:`ScoreMaps.certify` for every shape, at a fraction of the cost, because
    Condition 3.2's region sums are computed only where they can change the answer. Writing
    Σ_R Δ(c) for Σ_{(i,j) ∈ R} Δ(i, j, c):

    * Condition 3.3 needs only the global sums, and it implies Condition 3.2, since
      Σ_{∉R(l)} Δ(c) ≥ Σ Δ(c) − #R(l) > 2 R_max − #R(l) ≥ #R(l);
    * a class c with Σ Δ(c) > 2 R_max cannot violate Condition 3.2 (every term is ≥ Σ Δ(c) − 2 #R(l));
    * certification is monotone in the patch: if a patch q contains a patch p (h_p ≤ h_q,
      w_p ≤ w_q), every R_p(l) lies inside some R_q(l′), and with Δ ∈ [−1, 1],
      Σ_{∉R_p(l)} Δ(c) − #R_p(l) ≥ Σ_{∉R_q(l′)} Δ(c) − #R_q(l′). So an image not certified
      against p is not certified against q, and only the images certified against the largest
      shape inside q already processed are scanned for q.

    Score maps of the samples that may need a scan are kept (as uint8 when every score is 0 or 1)
    until :meth:`counts`; summed-area tables are built only for the pairs scanned. ``tests/test_certify.py`` checks the
    counts against :class:`ScoreMaps` for binary, sigmoid-like and softmax scores.
    """

    def __init__(self, patches, rf, stride=1, image_size=None, chunk_elems: int = 1 << 24):
        self.patches = [_pair(p, "patch") for p in patches]
        if not self.patches:
            raise ValueError("give at least one patch shape")
        self.rf, self.stride, self.image_size = rf, stride, image_size
        self.chunk_elems = chunk_elems
        self.n = 0
        self._geo = None
        self._parts = []            # per batch: labels, correct, min_total, pairs (img, cls, Δ total)

    def _setup(self, shape, device):
        geos = [_Geometry(shape, p, self.rf, self.stride, self.image_size) for p in self.patches]
        self._ranges, self._areas = [], []
        for g in geos:
            r = _region_ranges(g, device)
            self._ranges.append(r)
            self._areas.append(((r[1] - r[0] + 1)[:, None] * (r[3] - r[2] + 1)[None, :]))
        self.r_max = torch.tensor([int(a.max()) for a in self._areas], dtype=torch.float64,
                                  device=device)
        self._geo = shape[1:]

    def add(self, scores: torch.Tensor, labels: torch.Tensor, binary: bool | None = None) -> torch.Tensor:
        """Add one batch of region scores (B, C, H, W) in [0, 1]; returns its ``correct`` (B,).

        ``binary``: whether every score is 0 or 1 (the Heaviside head); None: check. Binary
        scores are summed exactly in float32 and int16, others in float64.
        """
        labels = _check_scores(scores, labels)
        B, C, H, W = scores.shape
        if self._geo is None:
            self._setup(scores.shape, scores.device)
        elif tuple(scores.shape[1:]) != tuple(self._geo):
            raise ValueError(f"score maps changed shape: {tuple(scores.shape[1:])} after {self._geo}")
        if binary is None:
            binary = bool(((scores == 0) | (scores == 1)).all())
        binary = binary and scores.dtype in (torch.float32, torch.float64)
        tol = TIE_TOL * H * W
        total = scores.sum((2, 3)).double() if binary else scores.sum((2, 3), dtype=torch.float64)
        delta_total = total.gather(1, labels[:, None]) - total           # Σ_{i,j} Δ_{i,j,c}
        is_true = torch.nn.functional.one_hot(labels, C).bool()
        min_total = delta_total.masked_fill(is_true, float("inf")).min(1).values
        correct = min_total > tol
        # pairs that some shape may have to scan: correct sample, c != c_t, Σ Δ_c <= 2 max R_max
        may = correct[:, None] & ~is_true & (delta_total <= 2 * self.r_max.max() + 2 * tol)
        keep = may.any(1).nonzero(as_tuple=True)[0]          # samples whose maps are kept
        local, cls = may[keep].nonzero(as_tuple=True)
        maps = scores.index_select(0, keep)
        self._parts.append(dict(
            correct=correct, min_total=min_total, tol=tol, binary=binary,
            maps=maps.to(torch.uint8) if binary else maps.float() if maps.dtype != torch.float64 else maps,
            labels=labels[keep], pair_map=local, img=keep[local] + self.n, cls=cls,
            delta_total=delta_total[keep[local], cls]))
        self.n += B
        return correct

    def _pairs(self):
        """All kept pairs: (correct, min_total per sample; pair -> sample, Δ total; a function
        giving the summed-area tables of a selection of pairs, cached), tolerance, binary."""
        parts = self._parts
        cat = lambda k: torch.cat([p[k] for p in parts])  # noqa: E731
        binary = all(p["binary"] for p in parts)
        maps, labels = cat("maps"), cat("labels")
        offsets = torch.tensor([0] + [len(p["maps"]) for p in parts[:-1]]).cumsum(0)
        pair_map = torch.cat([p["pair_map"] + o for p, o in zip(parts, offsets.tolist())])
        cls = cat("cls")
        H, W = maps.shape[-2:]
        # |box sums + areas| <= 2 H W: int16 is exact below 2^14 pixels
        dtype = (torch.int16 if H * W < 2 ** 14 else torch.int32) if binary else torch.float64
        P = torch.empty((len(cls), H + 1, W + 1), dtype=dtype, device=maps.device)
        done = torch.zeros(len(cls), dtype=torch.bool, device=maps.device)

        def tables(idx):
            new = idx[~done[idx]]
            if len(new):
                m, c = pair_map[new], cls[new]
                delta = maps[m, labels[m]].to(dtype) - maps[m, c].to(dtype)        # Δ_c maps
                P[new] = torch.nn.functional.pad(delta.cumsum(-1, dtype=dtype).cumsum(-2, dtype=dtype),
                                                 (1, 0, 1, 0))
                done[new] = True
            return P.index_select(0, idx)

        return (cat("correct"), cat("min_total"), cat("img"), cat("delta_total"), tables,
                parts[0]["tol"], binary)

    def counts(self) -> pd.DataFrame:
        """Per patch shape, one row: n, correct, certified (Condition 3.2), certified_global (3.3),
        seconds."""
        if self.n == 0:
            raise ValueError("no samples were added")
        correct, min_total, img, delta_total, tables, tol, binary = self._pairs()
        thresh = 0 if binary else tol             # integer sums: ties are exact
        certified = {}
        order = sorted(range(len(self.patches)), key=lambda k: self.patches[k][0] * self.patches[k][1])
        rows = [None] * len(self.patches)
        for k in order:
            t0 = time.perf_counter()
            (h, w), r_max = self.patches[k], self.r_max[k]
            cert33 = correct & (min_total > 2 * r_max + tol)
            inner = [q for q in certified if q[0] <= h and q[1] <= w]
            candidates = certified[max(inner, key=lambda q: q[0] * q[1])] if inner else correct
            scan = candidates & ~cert33
            sel = (scan[img] & (delta_total <= 2 * r_max + 2 * tol)).nonzero(as_tuple=True)[0]
            # first each sample's class with the smallest Σ Δ_c (the likeliest to violate), then
            # the other classes of the samples that survived it
            sel = sel[torch.sort(delta_total[sel], stable=True).indices]
            sel = sel[torch.sort(img[sel], stable=True).indices]
            first = torch.ones_like(sel, dtype=torch.bool)
            first[1:] = img[sel][1:] != img[sel][:-1]
            violated = torch.zeros_like(correct)
            r0, r1, c0, c1 = self._ranges[k]
            area = self._areas[k]
            step = max(1, self.chunk_elems // max(1, area.numel()))
            for rnd, pairs in enumerate((sel[first], sel[~first])):
                if rnd:
                    pairs = pairs[~violated[img[pairs]]]
                for i in range(0, len(pairs), step):
                    idx = pairs[i:i + step]
                    t = tables(idx)
                    m = (region_sums(t, r0, r1, c0, c1) + area.to(t.dtype)).amax((1, 2))  # max_l Σ_R(l) (Δ+1)
                    bad = delta_total[idx] - m.to(torch.float64) <= thresh   # Condition 3.2 fails at some l
                    violated[img[idx[bad]]] = True
            cert32 = cert33 | (scan & ~violated)
            certified[(h, w)] = cert32
            rows[k] = {"patch": patch_label((h, w)), "patch_h": h, "patch_w": w, "n": self.n,
                       "correct": int(correct.sum()), "certified": int(cert32.sum()),
                       "certified_global": int(cert33.sum()), "seconds": time.perf_counter() - t0}
        return pd.DataFrame(rows)


def worst_case_direct(scores: torch.Tensor, labels: torch.Tensor, patch, rf, stride=1,
                      image_size=None) -> torch.Tensor:
    """Condition 3.2's margin (as :meth:`ScoreMaps.worst_case`) by a direct loop over patch
    positions l, summing Δ over R(l) by slicing: the reference that the summed-area table
    replaces, for tests and ``benchmarks/certification.py``."""
    B, C, H, W = scores.shape
    geo = _Geometry(scores.shape, patch, rf, stride, image_size)
    r0, r1, c0, c1 = (t.tolist() for t in _region_ranges(geo, "cpu"))
    s = scores.to(torch.float64)
    delta = s.gather(1, labels.view(B, 1, 1, 1).expand(B, 1, H, W)) - s
    total = delta.sum((2, 3))
    is_true = torch.nn.functional.one_hot(labels, C).bool()
    best = torch.full((B,), float("inf"), dtype=torch.float64, device=scores.device)
    for a in range(len(r0)):
        for b in range(len(c0)):
            inside = delta[:, :, r0[a]:r1[a] + 1, c0[b]:c1[b] + 1].sum((2, 3))
            area = (r1[a] - r0[a] + 1) * (c1[b] - c0[b] + 1)
            m = (total - inside - area).masked_fill(is_true, float("inf")).min(1).values
            best = torch.minimum(best, m)
    return best


def patch_label(patch) -> str:
    """The paper's name of a patch shape, width × height: ``patch_label((1, 24)) == "24x1"``, the
    short-but-wide patch of §4. ``patch`` is (h, w), the order the certifier keeps internally
    (rows, then columns), or one int for a square."""
    h, w = _pair(patch, "patch")
    return f"{w}x{h}"


def patch_shape(label: str) -> tuple:
    """(h, w) of a :func:`patch_label` ("24x1", width × height): ``patch_shape("24x1") == (1, 24)``."""
    w, h = (int(x) for x in str(label).lower().replace("×", "x").split("x"))
    return _pair((h, w), "patch")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def certify_model(model, batches: Iterable, patches: Sequence, *, head: str = "heaviside",
                  device=None, amp: bool | None = None, progress: bool = True,
                  desc: str = "certify") -> pd.DataFrame:
    """Certify ``model`` over a data loader for many patch shapes, one forward pass per batch.

    Args:
        model: any module mapping images (B, 3, H, W) in [0, 1] to region logits
            (B, C, H_out, W_out), with attributes ``receptive_field`` (odd) and ``stride``: output
            (i, j) must depend only on the input window of that side centred at (i·stride, j·stride).
        batches: yields (images in [0, 1], labels).
        patches: patch shapes, ints (square) or (h, w) pairs.
        head: ``heaviside``, ``sigmoid`` or ``softmax`` (:mod:`bagcert_lib.heads`).
        device: where the model runs (default: its parameters' device).
        amp: bf16 autocast (None: where the device supports it, :func:`~bagcert_lib.runtime.use_amp`).
        progress, desc: a tqdm progress bar over the batches, and its label.

    Returns:
        a DataFrame with one row per (patch, condition): n, clean_accuracy, certified_accuracy,
        and timings: ``forward_s`` (the whole forward pass with the head, shared by all rows) and
        ``certify_s`` (this patch shape's certification, its share of the per-batch global sums
        included). The counts come from :class:`CertifiedCounter`.

    Example::

        model, cfg = load_pretrained("scaling-w64-e48-rf7-m0.5-heaviside-s0-seed0")
        test = load_dataset("cifar10")
        loader = ((x.float() / 255, y) for x, y in zip(test.x_test.split(500), test.y_test.split(500)))
        certify_model(model, loader, patches=[5, (1, 24), (24, 1)], head=cfg.head)
    """
    from tqdm import tqdm

    from .runtime import region_scores

    device = device or next(model.parameters()).device
    counter, t_forward, t_add = None, 0.0, 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if counter is None:
            counter = CertifiedCounter(patches, model.receptive_field, model.stride,
                                       image_size=tuple(x.shape[-2:]))
        _sync(device)
        t0 = time.perf_counter()
        s = region_scores(model, x, head=head, amp=amp)
        _sync(device)
        t1 = time.perf_counter()
        counter.add(s, y, binary=head == "heaviside")
        _sync(device)
        t_forward += t1 - t0
        t_add += time.perf_counter() - t1
    if counter is None or counter.n == 0:
        raise ValueError("the data loader yielded no samples")
    t0 = time.perf_counter()
    counts = counter.counts()
    _sync(device)
    t_shared = (t_add + time.perf_counter() - t0 - counts.seconds.sum()) / len(counts)
    rows = []
    for r in counts.itertuples():
        for cond, k in (("3.2", r.certified), ("3.3", r.certified_global)):
            rows.append({"patch": r.patch, "patch_h": r.patch_h, "patch_w": r.patch_w,
                         "condition": cond, "n": r.n, "clean_accuracy": r.correct / r.n,
                         "certified_accuracy": k / r.n, "forward_s": t_forward,
                         "certify_s": r.seconds + t_shared})
    df = pd.DataFrame(rows)
    df.attrs.update(forward_s=t_forward, certify_s=float(df.certify_s.sum() / 2), n=counter.n,
                    rf=model.receptive_field, stride=model.stride, head=head)
    return df
