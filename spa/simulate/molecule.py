"""A synthetic, clearly asymmetric protein-like molecule made of pseudo-atoms.

The molecule is built from secondary-structure elements with the geometry of
real proteins, so that maps look like maps and a mirror-image reconstruction is
detectable:

* α-helices: one pseudo-atom per residue on a right-handed helix (rise 1.5 Å,
  100° per residue, radius 2.3 Å) plus a side-chain pseudo-atom further out;
* β-sheets: strands 4.8 Å apart (rise 3.3 Å per residue, pleated, side chains
  alternating above and below the sheet), successive strands twisted;
* loops joining consecutive elements.

Elements are packed into 2–4 globular domains of different sizes, each turned
by a random rotation and placed against the others, so nothing is symmetric.
Coordinates are in Å, (x, y, z) order, centred on the centroid of the atoms
(the box centre voxel B//2 of every map and image made from it).

Assemblies (``symmetry="D2"``, ``"O"``, any group of
:func:`spa.geometry.symmetry.symmetry_matrices`) copy an asymmetric subunit,
placed off every symmetry axis, with each group rotation R (atoms R·p), so the
map satisfies V(Rᵀ r) = V(r).  ``conformation=k`` (k ≥ 2) turns the last
domain about a hinge by (k − 1) × ``hinge_deg`` degrees: the same molecule in
another state, for 3D classification.  Everything is deterministic from
``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RISE_HELIX = 1.5  # Å per residue along the helix axis
TURN_HELIX = np.deg2rad(100.0)  # per residue; positive = right-handed about +axis
RADIUS_HELIX = 2.3  # Å, Cα radius
RISE_STRAND = 3.3  # Å per residue along a strand
STRAND_SPACING = 4.8  # Å between neighbouring strands of a sheet
HELIX_SPACING = 10.0  # Å between packed helix axes


@dataclass(frozen=True)
class Molecule:
    """Pseudo-atoms of a molecule.

    Attributes
    ----------
    coords : (N, 3) float64
        Positions in Å, (x, y, z) order, origin = the box centre.
    weights : (N,) float64
        Scattering mass of each pseudo-atom (arbitrary units; a Cα ≈ 1).
    sigmas : (N,) float64
        Intrinsic Gaussian width (standard deviation) in Å.
    domains : (N,) int
        Domain index of each atom (subunit s, domain d → s · n_domains + d).
    symmetry : str
        Point group of the assembly ("C1" for a single subunit).
    """

    coords: np.ndarray
    weights: np.ndarray
    sigmas: np.ndarray
    domains: np.ndarray
    symmetry: str = "C1"

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def radius(self) -> float:
        """Largest distance of an atom centre from the origin (Å)."""
        return float(np.sqrt((self.coords**2).sum(1)).max()) if len(self) else 0.0

    def transformed(self, matrix: np.ndarray) -> "Molecule":
        """The molecule with every atom moved to ``matrix @ p``."""
        return Molecule(self.coords @ np.asarray(matrix, float).T, self.weights, self.sigmas, self.domains, self.symmetry)


# -- rotations ----------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (unit quaternion method)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_angle(axis, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _frame(direction: np.ndarray) -> np.ndarray:
    """Rotation whose third column is ``direction`` (maps local +z onto it)."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(helper, d)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return np.stack([u, v, d], axis=1)


# -- secondary-structure elements (local frames, axis along +z) ----------------------
def helix(n_res: int, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cα and side-chain pseudo-atoms of an ideal right-handed α-helix along +z from z = 0."""
    i = np.arange(n_res)
    t = phase + TURN_HELIX * i
    ca = np.stack([RADIUS_HELIX * np.cos(t), RADIUS_HELIX * np.sin(t), RISE_HELIX * i], 1)
    # side chains point outwards and back along the axis, as in real helices
    sc = np.stack([4.6 * np.cos(t + 0.25), 4.6 * np.sin(t + 0.25), RISE_HELIX * i - 1.2], 1)
    return ca, sc


def strand(n_res: int) -> tuple[np.ndarray, np.ndarray]:
    """Cα and side-chain pseudo-atoms of a pleated β-strand along +z (sheet in the x–z plane)."""
    i = np.arange(n_res)
    pleat = 0.9 * (-1.0) ** i
    ca = np.stack([np.zeros(n_res), pleat, RISE_STRAND * i], 1)
    sc = np.stack([np.zeros(n_res), 3.2 * (-1.0) ** i, RISE_STRAND * i], 1)
    return ca, sc


def loop(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, step: float = 3.8) -> np.ndarray:
    """Pseudo-atoms bridging points ``a`` → ``b`` (exclusive) along a bulged arc."""
    d = np.linalg.norm(b - a)
    n = int(d // step)
    if n < 1:
        return np.zeros((0, 3))
    t = np.arange(1, n + 1) / (n + 1)
    bulge = rng.normal(size=3)
    bulge -= bulge.dot(b - a) / max(d * d, 1e-9) * (b - a)
    bulge *= min(0.3 * d, 4.0) / max(np.linalg.norm(bulge), 1e-9)
    return a + t[:, None] * (b - a) + np.sin(np.pi * t)[:, None] * bulge


# -- domains ---------------------------------------------------------------------------
def _domain(radius: float, rng: np.random.Generator, with_sheet: bool) -> tuple[list, list]:
    """Elements of one globular domain of ``radius`` Å centred at 0 (local frame).

    Returns (list of (ca, sc) per element in chain order, list of kinds).
    Helices stand on a hexagonal grid in the x–y plane (axes along ±z, alternating,
    slightly tilted); with ``with_sheet`` the x > 0.25 r part is a twisted sheet instead.
    """
    elements = []
    r_pack = 0.85 * radius
    xs = np.arange(-r_pack, r_pack + 1e-6, HELIX_SPACING * np.sqrt(3) / 2)
    sheet_x = 0.3 * radius
    sign = 1.0
    for row, x in enumerate(xs):
        ys = np.arange(-r_pack, r_pack + 1e-6, HELIX_SPACING) + (HELIX_SPACING / 2) * (row % 2)
        for y in ys:
            rho = np.hypot(x, y)
            if rho > r_pack or (with_sheet and x > sheet_x - 5.0):
                continue
            length = 2 * np.sqrt(max(radius**2 - rho**2, 0.0)) * rng.uniform(0.7, 0.95)
            n_res = int(length / RISE_HELIX)
            if n_res < 7:
                continue
            ca, sc = helix(n_res, phase=rng.uniform(0, 2 * np.pi))
            tilt = axis_angle(rng.normal(size=3) * [1, 1, 0] + [1e-3, 0, 0], rng.uniform(5, 15))
            flip = np.diag([1.0, sign, sign])  # antiparallel neighbours (proper rotation: 180° about x)
            shift = np.array([x, y, -sign * length / 2])
            rot = tilt @ flip
            elements.append((ca @ rot.T + shift, sc @ rot.T + shift))
            sign = -sign
    if not elements:  # a very small domain: one short helix through its centre
        n_res = max(7, int(1.8 * radius / RISE_HELIX))
        ca, sc = helix(n_res, phase=rng.uniform(0, 2 * np.pi))
        shift = np.array([0.0, 0.0, -RISE_HELIX * n_res / 2])
        elements.append((ca + shift, sc + shift))
    if with_sheet:
        half_y = np.sqrt(max(radius**2 - sheet_x**2, 0.0)) * 0.85
        ys = np.arange(-half_y, half_y + 1e-6, STRAND_SPACING)
        for k, y in enumerate(ys):
            length = 2 * np.sqrt(max(radius**2 - sheet_x**2 - y**2, 0.0)) * 0.85
            n_res = int(length / RISE_STRAND)
            if n_res < 3:
                continue
            ca, sc = strand(n_res)
            # sheet in the y–z plane: local x of the strand becomes y; alternate direction
            direction = 1.0 if k % 2 == 0 else -1.0
            base = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float) @ np.diag([1.0, 1.0, direction])
            base = base if np.linalg.det(base) > 0 else base @ np.diag([-1.0, 1.0, 1.0])
            twist = axis_angle((0, 1, 0), -8.0 * (k - len(ys) / 2))  # propeller twist from strand to strand
            shift = np.array([sheet_x + 2.0, y, -direction * length / 2])
            elements.append(((ca @ base.T) @ twist.T + shift, (sc @ base.T) @ twist.T + shift))
    return elements


def _build_subunit(diameter: float, rng: np.random.Generator, n_domains: int) -> tuple[np.ndarray, ...]:
    """Atoms of one asymmetric subunit of about ``diameter`` Å, centred at its centroid."""
    big = diameter / 2.0
    # different domain sizes, arranged around the centre like the corners of a
    # (perturbed) segment, triangle or tetrahedron, each touching the outer sphere
    fractions = {2: [0.56, 0.46], 3: [0.54, 0.47, 0.42], 4: [0.50, 0.45, 0.41, 0.38]}[n_domains]
    radii = big * np.array(fractions) * rng.uniform(0.96, 1.04, n_domains)
    corners = {
        2: [[0, 0, 1], [0, 0, -1]],
        3: [[1, 0, 0], [-0.5, 0.866, 0], [-0.5, -0.866, 0]],
        4: [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
    }[n_domains]
    turn = random_rotation(rng)
    centres = []
    for d in range(n_domains):
        direction = turn @ (np.array(corners[d], float) + rng.normal(scale=0.15, size=3))
        direction /= np.linalg.norm(direction)
        centres.append(direction * (big - radii[d]))
    coords, weights, sigmas, domains = [], [], [], []
    for d in range(n_domains):
        elements = _domain(radii[d], rng, with_sheet=(d % 2 == 1))
        rot = random_rotation(rng)
        chain = []
        for e, (ca, sc) in enumerate(elements):
            if e > 0:
                chain.append(("loop", loop(chain[-1][1][-1], ca[0], rng), None))
            chain.append(("ss", ca, sc))
        for kind, ca, sc in chain:
            if len(ca) == 0:
                continue
            pts = ca @ rot.T + centres[d]
            coords.append(pts)
            weights.append(rng.uniform(0.9, 1.1, len(pts)))
            sigmas.append(rng.uniform(1.0, 1.3, len(pts)) if kind == "ss" else rng.uniform(1.3, 1.6, len(pts)))
            domains.append(np.full(len(pts), d))
            if sc is not None:
                spts = sc @ rot.T + centres[d]
                coords.append(spts)
                weights.append(rng.uniform(0.5, 1.0, len(spts)))
                sigmas.append(rng.uniform(1.3, 1.8, len(spts)))
                domains.append(np.full(len(spts), d))
    coords = np.concatenate(coords)
    weights, sigmas, domains = np.concatenate(weights), np.concatenate(sigmas), np.concatenate(domains)
    coords = coords - np.average(coords, axis=0, weights=weights)
    keep = np.sqrt((coords**2).sum(1)) <= big
    return coords[keep], weights[keep], sigmas[keep], domains[keep], np.array(centres), radii


def _hinge(coords, domains, centres, radii, rng, angle_deg: float) -> np.ndarray:
    """Turn the last domain by ``angle_deg`` about an axis through its contact point."""
    last = int(domains.max())
    if angle_deg == 0 or last == 0:
        return coords
    rest = coords[domains != last].mean(0)
    c = coords[domains == last].mean(0)
    u = (c - rest) / np.linalg.norm(c - rest)
    pivot = c - u * radii[last]
    axis = np.cross(u, rng.normal(size=3))
    rot = axis_angle(axis, angle_deg)
    out = coords.copy()
    sel = domains == last
    out[sel] = (coords[sel] - pivot) @ rot.T + pivot
    return out


def _group_matrices(group: str) -> np.ndarray:
    from spa.geometry.symmetry import symmetry_matrices  # noqa: PLC0415

    return symmetry_matrices(group)


# generic direction, off every axis of C, D, T, O and I groups in RELION's settings
_OFF_AXIS = np.array([0.53, 0.31, 0.79]) / np.linalg.norm([0.53, 0.31, 0.79])


def make_molecule(
    diameter: float,
    *,
    seed: int = 0,
    n_domains: int = 3,
    symmetry: str = "C1",
    conformation: int = 1,
    hinge_deg: float = 30.0,
) -> Molecule:
    """Build the pseudo-atomic molecule.

    Parameters
    ----------
    diameter : float
        Overall diameter in Å (atom centres lie within ``diameter / 2`` of the
        origin, for conformation 1); typically 0.6 × box × pixel size.
    seed : int
        Everything (fold, domain placement, hinge axis) follows from it.
    n_domains : int
        2 to 4 domains per subunit.
    symmetry : str
        "C1" (a single asymmetric chain) or a point group, e.g. "D2", "O": the
        assembly of one subunit per group rotation.
    conformation : int
        1 = reference state; k ≥ 2 turns the last domain by (k − 1) × ``hinge_deg``.
    """
    if not 2 <= n_domains <= 4:
        raise ValueError(f"n_domains must be 2 to 4, got {n_domains}")
    if diameter <= 0:
        raise ValueError(f"diameter must be > 0 Å, got {diameter}")
    if conformation < 1:
        raise ValueError(f"conformation must be ≥ 1, got {conformation}")
    group = (symmetry or "C1").strip().upper()
    mats = _group_matrices(group)
    n_sym = len(mats)
    rng = np.random.default_rng([int(seed), 7])
    if n_sym == 1:
        sub_d, offset = diameter, 0.0
    else:
        # subunit size such that n_sym copies around the centre fill about the sphere
        frac = float(np.clip(1.25 * n_sym ** (-1.0 / 3.0), 0.2, 0.6))
        sub_d = diameter * frac
        offset = diameter / 2.0 - sub_d / 2.0
    coords, weights, sigmas, domains, centres, radii = _build_subunit(sub_d, rng, n_domains)
    hinge_rng = np.random.default_rng([int(seed), 11])
    coords = _hinge(coords, domains, centres, radii, hinge_rng, (conformation - 1) * hinge_deg)
    if n_sym > 1:
        coords = coords + offset * _OFF_AXIS
        coords = np.concatenate([coords @ m.T for m in mats])
        weights, sigmas = np.tile(weights, n_sym), np.tile(sigmas, n_sym)
        domains = np.concatenate([domains + s * n_domains for s in range(n_sym)])
    return Molecule(coords, weights, sigmas, domains.astype(np.int64), group)


def write_pdb(path, molecule: Molecule) -> None:
    """Write the pseudo-atoms as a minimal PDB (CA atoms; B-factor column = 8π²σ²)."""
    from spa.io.atomic import atomic_path  # noqa: PLC0415

    lines = ["REMARK   spa simulate pseudo-atomic model (coordinates in Å from the box centre)"]
    for i, ((x, y, z), s, d) in enumerate(zip(molecule.coords, molecule.sigmas, molecule.domains)):
        chain = chr(ord("A") + int(d) % 26)
        b = min(8 * np.pi**2 * s * s, 999.99)
        lines.append(
            f"ATOM  {(i + 1) % 100000:5d}  CA  ALA {chain}{(i + 1) % 10000:4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b:6.2f}           C"
        )
    lines.append("END")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
