"""Calibration of a classifier: expected calibration error (ECE) and the
reliability diagram (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017).

The confidences (the largest softmax score of each sample) are sorted into
``n_bins`` equal-width bins ``(k / n, (k + 1) / n]``; a bin's accuracy is the
share of its samples whose top-1 prediction is right, and

    ECE = sum_k (n_k / N) * |accuracy_k - confidence_k|

with ``confidence_k`` the mean confidence in bin ``k``. MCE is the largest
``|accuracy_k - confidence_k|`` over non-empty bins.

:class:`ExpectedCalibrationError` is an mmengine metric (``mmpretrain_overlock``
registers it in mmpretrain's ``METRICS``):

    test_evaluator = [dict(type='Accuracy', topk=(1, 5)),
                      dict(type='ExpectedCalibrationError', n_bins=15)]

or ``tools/test.py CONFIG CKPT --eval accuracy ece``.
"""
from typing import Dict, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

__all__ = [
    'calibration_bins', 'expected_calibration_error',
    'ExpectedCalibrationError', 'plot_reliability_diagram'
]


def _check(scores: torch.Tensor, labels: torch.Tensor, n_bins: int):
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f'n_bins must be a positive int, got {n_bins!r}')
    if scores.dim() != 2:
        raise ValueError(f'scores must be (N, num_classes) class '
                         f'probabilities, got shape {tuple(scores.shape)}')
    if labels.dim() != 1 or labels.numel() != scores.shape[0]:
        raise ValueError(f'labels must be (N,) class indices for the '
                         f'{scores.shape[0]} score rows, got shape '
                         f'{tuple(labels.shape)}')
    if scores.numel() and (scores.min() < 0 or scores.max() > 1 + 1e-6):
        raise ValueError('scores must be probabilities in [0, 1] (apply '
                         'softmax to logits first)')


def calibration_bins(scores: torch.Tensor, labels: torch.Tensor,
                     n_bins: int = 15) -> Dict[str, torch.Tensor]:
    """Per-bin counts, mean confidences and accuracies.

    Args:
        scores (torch.Tensor): ``(N, num_classes)`` class probabilities.
        labels (torch.Tensor): ``(N,)`` true class indices.
        n_bins (int): Number of equal-width confidence bins on ``[0, 1]``.
            Defaults to 15.

    Returns:
        dict: ``edges`` ``(n_bins + 1,)``, and per bin ``count`` (int64),
        ``confidence`` and ``accuracy`` (float64; 0 in empty bins).
    """
    _check(scores, labels, n_bins)
    conf, pred = scores.double().max(dim=1)
    correct = (pred == labels.long()).double()
    # bin k holds (k / n, (k + 1) / n]; a confidence of exactly 0 goes to 0
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(
        0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(
        0, idx, correct)
    denom = count.clamp(min=1).double()
    return dict(edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
                count=count, confidence=conf_sum / denom,
                accuracy=acc_sum / denom)


def _ece_mce(bins: Dict[str, torch.Tensor]):
    count = bins['count']
    total = int(count.sum())
    if total == 0:
        raise ValueError('no samples to compute the calibration error of')
    gap = (bins['accuracy'] - bins['confidence']).abs()
    ece = float((count.double() / total * gap).sum())
    mce = float(gap[count > 0].max())
    return ece, mce


def expected_calibration_error(scores: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = 15) -> float:
    """ECE as a fraction in ``[0, 1]``.

    Args:
        scores (torch.Tensor): ``(N, num_classes)`` class probabilities.
        labels (torch.Tensor): ``(N,)`` true class indices.
        n_bins (int): Number of equal-width bins. Defaults to 15.

    Returns:
        float: The expected calibration error.
    """
    return _ece_mce(calibration_bins(scores, labels, n_bins))[0]


def plot_reliability_diagram(bins: Dict[str, torch.Tensor], out_file: str,
                             title: Optional[str] = None) -> str:
    """Save a reliability diagram: per-bin accuracy (bars) against the
    diagonal of perfect calibration, the gap to the bins' mean confidence
    shaded, and the confidence histogram below.

    Args:
        bins (dict): The output of :func:`calibration_bins`.
        out_file (str): Image path (PNG, PDF, SVG: by the extension).
        title (str, optional): Figure title; the ECE / MCE are appended.
            Defaults to None.

    Returns:
        str: ``out_file``.
    """
    # the object-oriented API: no pyplot, no global backend change
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ece, mce = _ece_mce(bins)
    edges = bins['edges'].tolist()
    width = edges[1] - edges[0]
    left = edges[:-1]
    count = bins['count'].tolist()
    acc = bins['accuracy'].tolist()
    conf = bins['confidence'].tolist()
    filled = [c > 0 for c in count]

    fig = Figure(figsize=(4.5, 5.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw=dict(height_ratios=(3, 1)))
    top.bar(left, [a if f else 0 for a, f in zip(acc, filled)], width=width,
            align='edge', color='#3b75af', edgecolor='black', linewidth=0.5,
            label='accuracy')
    top.bar(left, [c - a if f else 0 for a, c, f in zip(acc, conf, filled)],
            bottom=[a if f else 0 for a, f in zip(acc, filled)], width=width,
            align='edge', color='#e0463e', alpha=0.35, edgecolor='#e0463e',
            linewidth=0.5, label='gap to confidence')
    top.plot([0, 1], [0, 1], '--', color='grey', label='perfect calibration')
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel('accuracy')
    top.legend(loc='upper left', fontsize=8)
    text = f'ECE {100 * ece:.2f} %, MCE {100 * mce:.2f} %'
    top.set_title(f'{title}\n{text}' if title else text, fontsize=10)
    bottom.bar(left, count, width=width, align='edge', color='grey',
               edgecolor='black', linewidth=0.5)
    bottom.set_xlabel('confidence')
    bottom.set_ylabel('samples')
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    return out_file


class ExpectedCalibrationError(BaseMetric):
    """Expected (and maximum) calibration error of a classifier's top-1
    predictions, in percent like mmpretrain's accuracy.

    Reads ``pred_score`` (softmax scores) and ``gt_label`` of mmpretrain's
    data samples; results are ``calibration/ece`` and ``calibration/mce``.

    Args:
        n_bins (int): Number of equal-width confidence bins. Defaults to 15.
        plot_file (str, optional): Also save the reliability diagram there.
            Defaults to None.
        collect_device (str): ``'cpu'`` or ``'gpu'``, where results are
            gathered across processes. Defaults to ``'cpu'``.
        prefix (str, optional): Metric name prefix. Defaults to None
            (``'calibration'``).
    """
    default_prefix = 'calibration'

    def __init__(self,
                 n_bins: int = 15,
                 plot_file: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f'n_bins must be a positive int, got {n_bins!r}')
        self.n_bins = n_bins
        self.plot_file = plot_file

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'pred_score' not in sample or 'gt_label' not in sample:
                raise ValueError(
                    'ExpectedCalibrationError needs pred_score (softmax '
                    'scores) and gt_label in the predictions; got keys '
                    f'{sorted(sample)}. Use it with a classifier whose '
                    'predict() sets scores (mmpretrain ClsHead).')
            label = sample['gt_label']
            label = label.reshape(-1) if isinstance(label, torch.Tensor) \
                else torch.as_tensor(label).reshape(-1)
            if label.numel() != 1:
                raise ValueError(f'ExpectedCalibrationError needs one label '
                                 f'per sample, got {label.tolist()}')
            self.results.append(
                (sample['pred_score'].detach().cpu().float(),
                 int(label.item())))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        scores = torch.stack([r[0] for r in results])
        labels = torch.tensor([r[1] for r in results])
        bins = calibration_bins(scores, labels, self.n_bins)
        ece, mce = _ece_mce(bins)
        if self.plot_file:
            plot_reliability_diagram(bins, self.plot_file)
            MMLogger.get_current_instance().info(
                'reliability diagram saved to %s', self.plot_file)
        return dict(ece=100 * ece, mce=100 * mce)
