"""Expected calibration error and the reliability diagram on known inputs."""
import pytest
import torch

pytest.importorskip('mmengine')
from overlock_mm.calibration import (ExpectedCalibrationError,  # noqa: E402
                                     calibration_bins,
                                     expected_calibration_error,
                                     plot_reliability_diagram)

#: confidences 0.9 (right), 0.85 (wrong), 0.5 (right), 0.6 (wrong: exactly
#: on the edge between bins 2 and 3, so it belongs to bin 2, (0.4, 0.6]),
#: 0.4 (wrong)
SCORES = torch.tensor([[0.9, 0.05, 0.05],
                       [0.1, 0.85, 0.05],
                       [0.5, 0.3, 0.2],
                       [0.2, 0.2, 0.6],
                       [0.4, 0.35, 0.25]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_bins_and_ece_by_hand():
    bins = calibration_bins(SCORES, LABELS, n_bins=5)
    assert bins['edges'].tolist() == pytest.approx([0, .2, .4, .6, .8, 1])
    assert bins['count'].tolist() == [0, 1, 2, 0, 2]
    assert bins['confidence'].tolist() == pytest.approx(
        [0, 0.4, 0.55, 0, 0.875])
    assert bins['accuracy'].tolist() == pytest.approx([0, 0, 0.5, 0, 0.5])
    # (1 * |0 - .4| + 2 * |.5 - .55| + 2 * |.5 - .875|) / 5 = 1.25 / 5
    assert expected_calibration_error(SCORES, LABELS, n_bins=5) == \
        pytest.approx(0.25, abs=1e-12)


def test_perfectly_calibrated_and_single_bin():
    # 4 samples at confidence 0.75, 3 right: accuracy = confidence
    scores = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(scores, labels) == pytest.approx(
        0.0, abs=1e-12)
    # one bin: ECE = |accuracy - mean confidence| = |0.5 - 0.7|
    scores = torch.tensor([[0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    assert expected_calibration_error(scores, torch.tensor([0, 0]),
                                      n_bins=1) == pytest.approx(0.2)


def test_metric_from_data_samples():
    """As the evaluator sees them: pred_score (float32) and gt_label per
    sample; results in percent."""
    scores = SCORES.clone()
    # away from the bin edges, which float32 would move across
    scores[3] = torch.tensor([0.15, 0.2, 0.65], dtype=torch.float64)
    scores[4] = torch.tensor([0.38, 0.35, 0.27], dtype=torch.float64)
    metric = ExpectedCalibrationError(n_bins=5)
    samples = [dict(pred_score=s.float(), gt_label=torch.tensor([int(y)]))
               for s, y in zip(scores, LABELS)]
    metric.process({}, samples[:2])
    metric.process({}, samples[2:])
    out = metric.evaluate(len(samples))
    # bins: (.2,.4]: .38 wrong; (.4,.6]: .5 right; (.6,.8]: .65 wrong;
    # (.8,1]: .9 right, .85 wrong -> (.38 + .5 + .65 + 2 * .375) / 5 = .456
    assert set(out) == {'calibration/ece', 'calibration/mce'}
    assert out['calibration/ece'] == pytest.approx(45.6, abs=1e-4)
    assert out['calibration/mce'] == pytest.approx(65.0, abs=1e-4)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match='apply softmax'):
        calibration_bins(SCORES * 3, LABELS)
    with pytest.raises(ValueError, match=r'labels must be \(N,\)'):
        calibration_bins(SCORES, LABELS[:3])
    with pytest.raises(ValueError, match='n_bins must be a positive int'):
        ExpectedCalibrationError(n_bins=0)
    metric = ExpectedCalibrationError()
    with pytest.raises(ValueError, match='needs pred_score'):
        metric.process({}, [dict(pred_label=torch.tensor([1]))])


def test_reliability_diagram_is_written(tmp_path):
    bins = calibration_bins(SCORES, LABELS, n_bins=5)
    out = plot_reliability_diagram(bins, str(tmp_path / 'rel.png'),
                                   title='toy')
    from PIL import Image
    img = Image.open(out)
    assert img.size == (540, 660)  # 4.5 x 5.5 inches at 120 dpi
    # the metric saves the same diagram when asked to
    metric = ExpectedCalibrationError(n_bins=5,
                                      plot_file=str(tmp_path / 'm.png'))
    metric.process({}, [dict(pred_score=s.float(), gt_label=int(y))
                        for s, y in zip(SCORES, LABELS)])
    metric.evaluate(5)
    assert (tmp_path / 'm.png').stat().st_size > 10000
