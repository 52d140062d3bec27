"""The demo's real data, all of it shipped inside installed packages.

Nothing is downloaded, so the demo runs offline and in CI:

* :func:`handwritten_digits`: scikit-learn's handwritten digits
  (``sklearn.datasets.load_digits``: 1,797 scans of 8×8 pixels, 16 grey
  levels, from the UCI "Optical Recognition of Handwritten Digits" set),
  resized to 28×28 as MNIST lays digits out, so that seed 003's MNIST network
  keeps its 784 inputs;
* :func:`python_documentation_text`: the text of Python's own documentation
  that ships with the standard library (``pydoc_data.topics``, the pages that
  ``help()`` shows: the language reference's statements, operators, types).
"""

from __future__ import annotations

import collections

import numpy as np

SIDE = 28  # MNIST's image side, in pixels
BOX = 20  # MNIST centres each digit in a 20×20 box of the 28×28 image
_SOURCE_SIDE = 8  # sklearn's digits are 8×8
_SOURCE_LEVELS = 16.0  # their pixels are counts 0..16 of a 4×4 block


def _linear_resize(n_in: int, n_out: int) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of a 1-D linear resize (pixel centres aligned).

    Output pixel ``i`` samples the input at ``(i + 0.5) · n_in / n_out - 0.5``,
    clamped to the edge pixels, between its two neighbours: the half-pixel
    convention of image resizers (e.g. ``tf.image.resize``'s bilinear).
    """
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def handwritten_digits() -> tuple[np.ndarray, np.ndarray]:
    """Returns every scikit-learn digit as a 28×28 image in MNIST's layout.

    Each 8×8 scan is scaled to [0, 1], resized bilinearly to 20×20 and centred
    in a 28×28 image with a 4-pixel margin, as MNIST centres its digits in a
    20×20 box.

    Returns:
        ``(x, y)``: float32 ``[1797, 784]`` pixels in [0, 1] (rows of the
        28×28 image, flattened) and int32 ``[1797]`` digits 0..9.

    Raises:
        ImportError: Without scikit-learn (``pip install -e '.[demo]'``).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images / _SOURCE_LEVELS
    resize = _linear_resize(_SOURCE_SIDE, BOX)
    boxed = resize @ images @ resize.T  # [n, 20, 20]
    margin = (SIDE - BOX) // 2
    full = np.pad(boxed, ((0, 0), (margin, margin), (margin, margin)))
    return (
        full.reshape(len(full), SIDE * SIDE).astype(np.float32),
        digits.target.astype(np.int32),
    )


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Picks ``per_class`` examples of every class at random, in a random order.

    Args:
        labels: int ``[n]`` class of each example.
        per_class: Examples to take from each class.
        seed: The numpy seed of the choice and the order.

    Returns:
        int ``[per_class · classes]`` indices into ``labels``.

    Raises:
        ValueError: When a class has fewer than ``per_class`` examples.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has {members.size} < {per_class} examples")
        chosen.append(rng.permutation(members)[:per_class])
    return rng.permutation(np.concatenate(chosen))


def python_documentation_text() -> str:
    """Returns the text of the documentation pages that ship with Python.

    The pages of ``pydoc_data.topics`` (what ``help("if")`` and the like
    show), in the order of their names, with every run of white space (the
    pages' indentation) made one space. About 400,000 characters of English
    prose with Python code in it; the exact text follows the Python version.

    Returns:
        The text.
    """
    from pydoc_data import topics

    pages = (topics.topics[name] for name in sorted(topics.topics))
    return " ".join(" ".join(page.split()) for page in pages)


def character_tokens(text: str, vocab: int) -> tuple[np.ndarray, str]:
    """Encodes a text as character ids over its ``vocab - 1`` commonest characters.

    Args:
        text: The text.
        vocab: The number of ids: the ``vocab - 1`` most frequent characters
            (ties by character) get ids ``0 .. vocab - 2``; every other
            character the last id, ``vocab - 1``.

    Returns:
        ``(ids, alphabet)``: int32 ``[len(text)]`` ids, and the characters of
        ids ``0 .. vocab - 2`` in order.
    """
    counts = collections.Counter(text)
    alphabet = "".join(sorted(counts, key=lambda ch: (-counts[ch], ch))[: vocab - 1])
    lookup = np.full(max(map(ord, text)) + 1, vocab - 1, np.int32)
    lookup[[ord(ch) for ch in alphabet]] = np.arange(len(alphabet))
    return lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)], alphabet
