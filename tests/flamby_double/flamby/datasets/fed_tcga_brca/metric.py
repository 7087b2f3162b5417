"""Fed-TCGA-BRCA's metric: Harrell's concordance index (C-index) of the predicted risks.

``concordance_index`` follows ``lifelines.utils.concordance_index`` (lifelines is not needed): the
same input checks and messages, the same admissible pairs, and the same arithmetic on the same
``np.int64`` counts, so it returns lifelines' value as an ``np.float64``. A pair is admissible
when the earlier time ``T_i`` is an observed event and the other record left later (``T_j >
T_i``), or at the same time but censored; it is concordant when the record that lived longer has
the higher predicted score, and a tie in the predictions counts one half. lifelines counts with
a balanced tree in O(n log n); this counts the same pairs blockwise with numpy.
"""

import numpy as np

_BLOCK = 2048


def _preprocess_scoring_data(event_times, predicted_scores, event_observed):
    """lifelines' checks and conversions (float64 vectors; ``(n, 1)``/``(1, n)`` flattened)."""
    event_times = np.asarray(event_times, dtype=float)
    predicted_scores = np.asarray(predicted_scores, dtype=float)
    if event_times.ndim == 2 and (event_times.shape[0] == 1 or event_times.shape[1] == 1):
        event_times = event_times.ravel()
    if predicted_scores.ndim == 2 and (
        predicted_scores.shape[0] == 1 or predicted_scores.shape[1] == 1
    ):
        predicted_scores = predicted_scores.ravel()
    if event_times.shape != predicted_scores.shape:
        raise ValueError("Event times and predictions must have the same shape")
    if event_times.ndim != 1:
        raise ValueError("Event times can only be 1-dimensional: (n,)")
    if event_observed is None:
        event_observed = np.ones(event_times.shape[0], dtype=float)
    else:
        event_observed = np.asarray(event_observed, dtype=float).ravel()
        if event_observed.shape != event_times.shape:
            raise ValueError("Observed events must be 1-dimensional of same length as event times")
    for array in (event_times, predicted_scores, event_observed):
        if np.isnan(array).any():
            raise ValueError("NaNs detected in inputs, please correct or drop.")
    return event_times, predicted_scores, event_observed


def _concordance_summary_statistics(times, scores, events):
    """``(num_correct, num_tied, num_pairs)`` as ``np.int64`` (lifelines: ``(0, 0, 0)`` ints when
    no event is observed)."""
    if np.logical_not(events).all():
        return (0, 0, 0)
    died = events.astype(bool)
    num_pairs = num_correct = num_tied = np.int64(0)
    for start in range(0, times.shape[0], _BLOCK):  # rows i in blocks: memory O(block * n)
        rows = slice(start, start + _BLOCK)
        t_i, s_i = times[rows, None], scores[rows, None]
        # admissible[i, j]: i died first (strictly earlier, or at the same time as censored j).
        later = times[None, :] > t_i
        same_time_censored = (times[None, :] == t_i) & ~died[None, :]
        admissible = died[rows, None] & (later | same_time_censored)
        num_pairs += np.int64(admissible.sum())
        num_correct += np.int64((admissible & (scores[None, :] > s_i)).sum())
        num_tied += np.int64((admissible & (scores[None, :] == s_i)).sum())
    return (num_correct, num_tied, num_pairs)


def _concordance_ratio(num_correct, num_tied, num_pairs):
    if num_pairs == 0:
        raise ZeroDivisionError("No admissible pairs in the dataset.")
    return (num_correct + num_tied / 2) / num_pairs


def concordance_index(event_times, predicted_scores, event_observed=None):
    """C-index in [0, 1] (an ``np.float64``) of ``predicted_scores`` (higher = longer survival).

    ``event_observed`` (1 = event, 0 = censored) defaults to all events. Raises lifelines'
    ``ValueError`` on mismatched shapes or NaNs and ``ZeroDivisionError`` when no pair is
    admissible.
    """
    times, scores, events = _preprocess_scoring_data(event_times, predicted_scores, event_observed)
    return _concordance_ratio(*_concordance_summary_statistics(times, scores, events))


def metric(y_true, pred):
    """C-index of risk scores ``pred`` (``(n, 1)``) for ``y_true`` = ``[E, T]`` rows (``(n, 2)``).

    Higher risk means shorter survival, hence FLamby's ``concordance_index(T, -pred, E)``; like
    FLamby's (lifelines') it returns an ``np.float64``.
    """
    c_index = concordance_index(y_true[:, 1], -pred, y_true[:, 0])
    return c_index
