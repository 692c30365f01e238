"""torch.compile traces the backbone in train and eval mode (the custom
ContMix op included) and gives eager's numbers. A cheap backend (aot_eager)
keeps this a CPU test."""
import copy

import torch

from conftest import TINY_ARCH, randomize_
from overlock import OverLoCK


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_compile_train_and_eval_equal_eager():
    torch._dynamo.reset()
    eager = randomize_(OverLoCK(TINY_ARCH, selective_cp=True), seed=4)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))

    outs = []
    for m in (eager, compiled):
        m.train()
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        sum((o * (i + 1)).sum() for i, o in enumerate(y)).backward()
        outs.append(([o.detach() for o in y], xi.grad))
    for a, b in zip(outs[0][0], outs[1][0]):
        assert _max_rel(b, a) < 1e-5
    # float32 in another op order (decomposed ops), through a randomised
    # network: the tolerance of the reference tests
    assert _max_rel(outs[1][1], outs[0][1]) < 1e-4
    # relative to the largest gradient: some are rounding noise around zero
    # (biases feeding a train-mode BatchNorm)
    scale = max(p.grad.abs().max().item() for p in eager.parameters())
    for (n, p), q in zip(eager.named_parameters(), model.parameters()):
        assert (q.grad - p.grad).abs().max().item() < 1e-4 * scale, n
    # BatchNorm statistics moved once, as in eager mode
    sd_e, sd_c = eager.state_dict(), model.state_dict()
    for k in sd_e:
        if 'running' in k or 'num_batches' in k:
            torch.testing.assert_close(sd_c[k], sd_e[k], rtol=1e-5,
                                       atol=1e-6, msg=k)

    for m in (eager, compiled):
        m.eval()
    with torch.no_grad():
        for a, b in zip(eager(x), compiled(x)):
            assert _max_rel(b, a) < 1e-5
