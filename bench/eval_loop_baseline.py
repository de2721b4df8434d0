"""Baseline for bench/bench_eval.py: the verification protocol written with per-threshold loops.

A straightforward implementation of the protocol in the shape of the original arcface_torch
``evaluate`` (sklearn KFold, one Python iteration per threshold and fold). The one deliberate
difference: the VAL threshold uses the direct linear-interpolation formula instead of
``scipy.interpolate.interp1d``, which raises on repeated FAR values with scipy >= 1.9.
Kept independent of ``eval/verification.py`` so that the two cross-check each other.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold


def _splits(n_pairs: int, n_folds: int):
    indices = np.arange(n_pairs)
    if n_folds > 1:
        return list(KFold(n_splits=n_folds, shuffle=False).split(indices))
    return [(indices, indices)]


def accuracy_at(threshold: float, dist: np.ndarray, actual_issame: np.ndarray):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, actual_issame))
    fp = np.sum(np.logical_and(predict, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def val_far_at(threshold: float, dist: np.ndarray, actual_issame: np.ndarray):
    predict = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict, actual_issame))
    false_accept = np.sum(np.logical_and(predict, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    return float(true_accept) / float(n_same), float(false_accept) / float(n_diff)


def calculate_roc(thresholds, embeddings1, embeddings2, actual_issame, nrof_folds=10):
    """(tpr, fpr, accuracy, best_threshold_index per fold)."""
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    tprs = np.zeros((nrof_folds, len(thresholds)))
    fprs = np.zeros((nrof_folds, len(thresholds)))
    accuracy = np.zeros(nrof_folds)
    best_indices = np.zeros(nrof_folds, dtype=np.int64)
    for fold_idx, (train_set, test_set) in enumerate(_splits(len(actual_issame), nrof_folds)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = accuracy_at(threshold, dist[train_set], actual_issame[train_set])
        best = int(np.argmax(acc_train))
        best_indices[fold_idx] = best
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = accuracy_at(
                threshold, dist[test_set], actual_issame[test_set])
        _, _, accuracy[fold_idx] = accuracy_at(thresholds[best], dist[test_set], actual_issame[test_set])
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best_indices


def calculate_val(thresholds, embeddings1, embeddings2, actual_issame, far_target, nrof_folds=10):
    """(val_mean, val_std, far_mean, threshold per fold)."""
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    chosen = np.zeros(nrof_folds)
    for fold_idx, (train_set, test_set) in enumerate(_splits(len(actual_issame), nrof_folds)):
        far_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = val_far_at(threshold, dist[train_set], actual_issame[train_set])
        threshold = 0.0
        if np.max(far_train) >= far_target:
            a = 0
            for i in range(len(thresholds)):
                if far_train[i] <= far_target:
                    a = i
            if a + 1 < len(thresholds):
                threshold = thresholds[a] + (thresholds[a + 1] - thresholds[a]) * (
                    far_target - far_train[a]) / (far_train[a + 1] - far_train[a])
            else:
                threshold = thresholds[a]
        chosen[fold_idx] = threshold
        val[fold_idx], far[fold_idx] = val_far_at(threshold, dist[test_set], actual_issame[test_set])
    return np.mean(val), np.std(val), np.mean(far), chosen


def evaluate(embeddings, actual_issame, nrof_folds=10):
    """(tpr, fpr, accuracy, val, val_std, far) plus per-fold best threshold indices and VAL thresholds."""
    actual_issame = np.asarray(actual_issame)
    embeddings1, embeddings2 = embeddings[0::2], embeddings[1::2]
    tpr, fpr, accuracy, best = calculate_roc(np.arange(0, 4, 0.01), embeddings1, embeddings2,
                                             actual_issame, nrof_folds)
    val, val_std, far, val_thresholds = calculate_val(np.arange(0, 4, 0.001), embeddings1, embeddings2,
                                                      actual_issame, 1e-3, nrof_folds)
    return tpr, fpr, accuracy, val, val_std, far, best, val_thresholds
