"""Fed-TCGA-BRCA's metric: Harrell's concordance index (C-index) of the predicted risks.

``concordance_index`` follows ``lifelines.utils.concordance_index`` (lifelines is not needed):
a pair is admissible when the earlier time ``T_i`` is an observed event and the other record left
later (``T_j > T_i``), or at the same time but censored; it is concordant when the record that
lived longer has the higher predicted score, and a tie in the predictions counts one half.
"""

import numpy as np

_BLOCK = 2048


def _as_vector(values, name):
    array = np.asarray(values, dtype=float)
    if array.ndim == 2 and 1 in array.shape:
        array = array.ravel()
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional: (n,)")
    return array


def concordance_index(event_times, predicted_scores, event_observed=None):
    """C-index in [0, 1] of ``predicted_scores`` (higher = longer survival) against the times.

    ``event_observed`` (1 = event, 0 = censored) defaults to all events. Raises ``ValueError`` on
    mismatched shapes or NaNs and ``ZeroDivisionError`` when no pair is admissible (as lifelines).
    """
    times = _as_vector(event_times, "Event times")
    scores = _as_vector(predicted_scores, "Predictions")
    if times.shape != scores.shape:
        raise ValueError("Event times and predictions must have the same shape")
    if event_observed is None:
        events = np.ones(times.shape[0], dtype=float)
    else:
        events = np.asarray(event_observed, dtype=float).ravel()
        if events.shape != times.shape:
            raise ValueError("Observed events must be 1-dimensional of same length as event times")
    for array in (times, scores, events):
        if np.isnan(array).any():
            raise ValueError("NaNs detected in inputs, please correct or drop.")

    died = events.astype(bool)
    num_pairs = num_correct = num_tied = 0
    for start in range(0, times.shape[0], _BLOCK):  # rows i in blocks: memory O(block * n)
        rows = slice(start, start + _BLOCK)
        t_i, s_i = times[rows, None], scores[rows, None]
        # admissible[i, j]: i died first (strictly earlier, or at the same time as censored j).
        later = times[None, :] > t_i
        same_time_censored = (times[None, :] == t_i) & ~died[None, :]
        admissible = died[rows, None] & (later | same_time_censored)
        num_pairs += int(admissible.sum())
        num_correct += int((admissible & (scores[None, :] > s_i)).sum())
        num_tied += int((admissible & (scores[None, :] == s_i)).sum())
    if num_pairs == 0:
        raise ZeroDivisionError("No admissible pairs in the dataset.")
    return (num_correct + num_tied / 2) / num_pairs


def metric(y_true, pred):
    """C-index of risk scores ``pred`` (``(n, 1)``) for ``y_true`` = ``[E, T]`` rows (``(n, 2)``).

    Higher risk means shorter survival, hence FLamby's ``concordance_index(T, -pred, E)``.
    """
    return concordance_index(y_true[:, 1], -pred, y_true[:, 0])
