"""Predict with a LightGBM text model in NumPy alone (binary objective, numerical splits).

Importing ``lightgbm`` pulls in scikit-learn and takes seconds; applying a refinement
model only walks ~100 small trees, so this reader does it with NumPy, following
LightGBM's own rule (``Tree::NumericalDecision`` in LightGBM's ``tree.h``):

* ``decision_type`` bit 1 = missing values go left; bits 2-3 = missing type
  (0 none, 1 zero, 2 NaN);
* a NaN whose missing type is not NaN is treated as 0;
* a zero (missing type zero) or a NaN (missing type NaN) takes the default side;
  otherwise ``value <= threshold`` goes left;
* a child ``c < 0`` is leaf ``~c``; the raw score is the sum of the trees' leaf values,
  the probability ``1 / (1 + exp(-sigmoid * raw))``.

Categorical splits and linear trees are refused (refine never trains them). Checked
against ``lightgbm.Booster.predict`` in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ZERO = 1e-35  # LightGBM's kZeroThreshold

#: Rows per thread below which a matrix is walked in one piece. A walk of the packaged refine
#: model costs ~5 ms of Python (holding the GIL) plus ~11 us per row (NumPy, GIL released)
#: (2026-12-07, 64 / 1024 rows: 6 / 17 ms): a second chunk pays from ~1000 rows; a 1 mm
#: case has ~40 000.
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class _Tree:
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray


@dataclass(frozen=True)
class TreeEnsemble:
    feature_names: tuple[str, ...]
    sigmoid: float
    trees: tuple[_Tree, ...]

    @classmethod
    def from_text(cls, text: str) -> "TreeEnsemble":
        blocks = text.split("\nTree=")
        header = _fields(blocks[0])
        if header.get("version") is None or "feature_names" not in header:
            raise ValueError("not a LightGBM text model")
        objective = header.get("objective", "").split()
        if not objective or objective[0] != "binary" or header.get("num_class", "1") != "1":
            raise ValueError(f"a binary LightGBM model was expected, not objective {header.get('objective')!r}")
        sigmoid = next((float(o.split(":")[1]) for o in objective[1:] if o.startswith("sigmoid:")), 1.0)
        trees = []
        for block in blocks[1:]:
            block = block.split("\nend of trees")[0]
            f = _fields("Tree=" + block)
            if int(f.get("num_cat", "0")) or f.get("is_linear", "0") != "0":
                raise ValueError("categorical splits and linear trees are not supported")
            leaf_value = np.array(f["leaf_value"].split(), dtype=np.float64)
            if int(f["num_leaves"]) == 1:
                trees.append(_Tree(*(np.zeros(0, t) for t in (np.int64, np.float64, bool, np.int64, np.int64,
                                                               np.int64)), leaf_value))
                continue
            decision = np.array(f["decision_type"].split(), dtype=np.int64)
            trees.append(_Tree(np.array(f["split_feature"].split(), dtype=np.int64),
                               np.array(f["threshold"].split(), dtype=np.float64),
                               (decision & 2) > 0, (decision >> 2) & 3,
                               np.array(f["left_child"].split(), dtype=np.int64),
                               np.array(f["right_child"].split(), dtype=np.int64), leaf_value))
        return cls(tuple(header["feature_names"].split()), sigmoid, tuple(trees))

    def raw(self, features: np.ndarray) -> np.ndarray:
        """The raw score (sum of the trees' leaf values, in tree order) of each row. Rows are
        walked in :func:`~mstools.parallel.case_threads` chunks side by side (each row's sum
        is the same whatever the chunks)."""
        from mstools.parallel import case_threads, side_by_side

        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"{len(self.feature_names)} feature columns expected, not {x.shape}")
        chunks = min(case_threads(), len(x) // _CHUNK_ROWS)
        if chunks <= 1:
            return self._raw(x)
        return np.concatenate(side_by_side(self._raw, [(part,) for part in np.array_split(x, chunks)]))

    def _raw(self, x: np.ndarray) -> np.ndarray:
        total = np.zeros(len(x))
        rows = np.arange(len(x))
        nan_rows = np.isnan(x)
        as_zero = np.where(nan_rows, 0.0, x) if nan_rows.any() else x   # what a missing-type-none node sees
        for tree in self.trees:
            if tree.feature.size == 0:
                total += tree.leaf_value[0]
                continue
            plain = not tree.missing.any()      # every node missing type none: NaN is 0, then <= threshold
            node = np.zeros(len(x), dtype=np.int64)
            active = rows
            while active.size:
                n = node[active]
                if plain:
                    go_left = as_zero[active, tree.feature[n]] <= tree.threshold[n]
                else:
                    value = x[active, tree.feature[n]]
                    missing = tree.missing[n]
                    nan = np.isnan(value)
                    value = np.where(nan & (missing != 2), 0.0, value)
                    default = ((missing == 1) & (np.abs(value) <= _ZERO)) | ((missing == 2) & nan)
                    go_left = np.where(default, tree.default_left[n], value <= tree.threshold[n])
                child = np.where(go_left, tree.left[n], tree.right[n])
                node[active] = child
                active = active[child >= 0]
            total += tree.leaf_value[~node]
        return total

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row."""
        return 1.0 / (1.0 + np.exp(-self.sigmoid * self.raw(features)))


def _fields(block: str) -> dict[str, str]:
    out = {}
    for line in block.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def expected_trees(card: dict) -> int | None:
    """The tree count a model card records (``trees``; LightGBM may stop before ``rounds``)."""
    value = card.get("trees")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_model_text(text: str, card: dict, *, sha256: str | None = None) -> TreeEnsemble:
    """Validate a LightGBM text model against its card before LightGBM sees it.

    LightGBM's own reader trusts the text (a malformed tree can crash the process) and
    reads a truncated file as a smaller model. Checked: the card's ``model_sha256``
    (when the card has one, against ``sha256`` of the file), the header's ``tree_sizes``
    against the trees present (count and byte size of each), the card's tree count, the
    end marker, and every tree's arrays (lengths, child and feature indices). Returns the
    parsed model; raises ValueError saying what is wrong.
    """
    if not isinstance(card, dict):
        raise ValueError("the model card is not a JSON object")
    recorded = card.get("model_sha256")
    if recorded is not None and sha256 is not None and recorded != sha256:
        raise ValueError(f"its sha256 {sha256[:12]}... is not the card's {str(recorded)[:12]}... (the file was "
                         "changed or truncated)")
    blocks = text.split("\nTree=")
    header = _fields(blocks[0])
    if "tree_sizes" not in header:
        raise ValueError("no tree_sizes in the model's header (not a LightGBM text model)")
    try:
        sizes = [int(v) for v in header["tree_sizes"].split()]
    except ValueError:
        raise ValueError("unreadable tree_sizes in the model's header") from None
    if "\nend of trees" not in text:
        raise ValueError("no 'end of trees' marker (the file is truncated)")
    present = len(blocks) - 1
    if present != len(sizes):
        raise ValueError(f"{present} trees present, its header lists {len(sizes)} (the file is truncated or edited)")
    wanted = expected_trees(card)
    if wanted is not None and wanted != present:
        raise ValueError(f"{present} trees, its card says {wanted}")
    body = text[len(blocks[0]) + 1:text.index("\nend of trees") + 1]
    offset = 0
    for number, size in enumerate(sizes):
        if not body.startswith("Tree=", offset) or (number + 1 < len(sizes) and not body.startswith("Tree=", offset + size)):
            raise ValueError(f"tree {number} is not {size} bytes long as its header says (the file was edited)")
        offset += size
    try:
        ensemble = TreeEnsemble.from_text(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"not a valid LightGBM model ({exc})") from None
    n_features = len(ensemble.feature_names)
    for number, tree in enumerate(ensemble.trees):
        leaves = len(tree.leaf_value)
        inner = len(tree.feature)
        if leaves < 1 or (inner and inner != leaves - 1) or not (
                len(tree.threshold) == len(tree.left) == len(tree.right) == len(tree.missing) == inner):
            raise ValueError(f"tree {number}: arrays of inconsistent lengths (the file was edited)")
        children = np.concatenate([tree.left, tree.right])
        if inner and ((children >= inner).any() or (~children[children < 0] >= leaves).any()
                      or (tree.feature < 0).any() or (tree.feature >= n_features).any()):
            raise ValueError(f"tree {number}: a child or feature index out of range (the file was edited)")
        if inner and not _is_tree(tree.left, tree.right, leaves):
            raise ValueError(f"tree {number}: its nodes do not form a tree (a node reached twice or never, "
                             "the file was edited)")
    return ensemble


def _is_tree(left: np.ndarray, right: np.ndarray, leaves: int) -> bool:
    """Whether the child arrays, walked from node 0, reach every inner node and every leaf
    exactly once. A node reached twice can be a cycle, on which LightGBM's prediction loops
    for ever (a child index in range is not enough)."""
    inner_seen = np.zeros(len(left), dtype=bool)
    leaf_seen = np.zeros(leaves, dtype=bool)
    stack = [0]
    while stack:
        node = stack.pop()
        if inner_seen[node]:
            return False
        inner_seen[node] = True
        for child in (int(left[node]), int(right[node])):
            if child >= 0:
                stack.append(child)
            elif leaf_seen[~child]:
                return False
            else:
                leaf_seen[~child] = True
    return bool(inner_seen.all() and leaf_seen.all())
