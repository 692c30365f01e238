"""The OverLoCK ImageNet classifier as an mmpretrain model.

The network is :class:`overlock.OverLoCK` with ``num_classes > 0`` itself
(not wrapped), so the model's parameter names are upstream's
(``patch_embed1.*`` ... ``head.*``, ``aux_head.*``) and official ImageNet
checkpoints, plain and ``_reparam`` (``deploy=True``), load strictly.
mmpretrain supplies the rest: the data preprocessor with its batch
augmentations (Mixup / CutMix soft targets), the loss (``ClsHead`` with, e.g.,
``LabelSmoothLoss``) and the predictions (softmax scores, labels).
"""
from typing import List, Optional

import torch
from mmpretrain.models.classifiers import BaseClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from overlock_mm import OverLoCKBackbone

__all__ = ['OverLoCKClassifier']


class OverLoCKClassifier(OverLoCKBackbone, BaseClassifier):
    """OverLoCK classifier with upstream's auxiliary (deep supervision) loss.

    In training the network returns the ``main`` logits (``head``, on the
    Focus-Net output) and the ``aux`` logits (``aux_head``, on the
    Overview-Net context); as upstream's ``train.py`` the loss is
    ``L(main, y) + aux_loss_weight * L(aux, y)`` with the same loss function
    and the same (mixed, smoothed) targets. Evaluation uses ``main`` only.

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'`` or an arch
            dict, see :class:`overlock.OverLoCK`. Defaults to ``'t'``.
        num_classes (int): Number of classes (must be positive).
            Defaults to 1000.
        aux_loss_weight (float): Weight of the auxiliary loss (upstream's
            ``--aux-loss-ratio``). Defaults to 0.4.
        cls_head (dict): mmpretrain head that computes the loss and the
            predictions from logits; a ``ClsHead`` (no parameters) keeps the
            checkpoint keys upstream's. Defaults to
            ``dict(type='ClsHead', loss=dict(type='CrossEntropyLoss'),
            topk=(1, 5))``.
        train_cfg (dict, optional): ``dict(augments=[...])``: batch
            augmentations (Mixup, CutMix) as in mmpretrain's
            ``ImageClassifier``. Defaults to None.
        data_preprocessor (dict, optional): Defaults to None
            (``ClsDataPreprocessor``).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``
            loads through :func:`overlock.load_checkpoint` (strict).
            Defaults to None.
        **kwargs: Other arguments of :class:`overlock.OverLoCK`
            (``drop_path_rate``, ``deploy``, ``projection``, ``use_ds``,
            ``with_cp``, ...). Defaults to upstream's values.
    """

    def __init__(self,
                 arch='t',
                 num_classes: int = 1000,
                 aux_loss_weight: float = 0.4,
                 cls_head: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(
                f'OverLoCKClassifier needs num_classes > 0, got '
                f'{num_classes!r}; for features use the OverLoCK backbone.')
        if aux_loss_weight < 0:
            raise ValueError(f'aux_loss_weight must be >= 0, got '
                             f'{aux_loss_weight}')
        for key in ('fuse_overview', 'out_indices'):
            if key in kwargs:
                raise ValueError(f'OverLoCKClassifier does not take {key!r} '
                                 f'(a backbone option); remove it.')
        super().__init__(arch, num_classes=num_classes, init_cfg=init_cfg,
                         **kwargs)
        self.aux_loss_weight = aux_loss_weight
        if cls_head is None:
            cls_head = dict(type='ClsHead', loss=dict(type='CrossEntropyLoss'),
                            topk=(1, 5))
        self.cls_head = MODELS.build(cls_head)
        if any(True for _ in self.cls_head.parameters()):
            raise ValueError(
                f'cls_head {cls_head["type"]} has parameters; the classifier '
                f'already has its head (upstream\'s head / aux_head): use a '
                f"parameter-free head such as dict(type='ClsHead', loss=...).")
        if train_cfg is not None and 'augments' not in train_cfg:
            raise ValueError(f'train_cfg takes augments=[...] (batch '
                             f'augmentations), got keys {sorted(train_cfg)}')
        preprocessor = dict(data_preprocessor or {})
        preprocessor.setdefault('type', 'ClsDataPreprocessor')
        preprocessor.setdefault('batch_augments', train_cfg)
        self.data_preprocessor = MODELS.build(preprocessor)

    def _logits(self, inputs: torch.Tensor):
        """``(main, aux)`` in training with ``aux_head``, else ``(main,
        None)``."""
        out = super().forward(inputs)
        if isinstance(out, tuple):
            return out
        return out, None

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """mmpretrain's entry point.

        Args:
            inputs (torch.Tensor): Images ``(N, 3, H, W)``, preprocessed.
            data_samples (list[DataSample], optional): Labels (``loss``) or
                samples to fill (``predict``). Defaults to None.
            mode (str): ``'tensor'`` (the network's output: logits, or
                ``(main, aux)`` in training), ``'loss'`` or ``'predict'``.
                Defaults to ``'tensor'``.
        """
        if mode == 'tensor':
            return super().forward(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'Invalid mode {mode!r}; use "tensor", "loss" or '
                         f'"predict".')

    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """The main logits (the classifier's last feature)."""
        return self._logits(inputs)[0]

    def loss(self, inputs: torch.Tensor,
             data_samples: List[DataSample]) -> dict:
        """``loss`` (main) and ``loss_aux`` (already multiplied by
        ``aux_loss_weight``); mmengine sums them."""
        main, aux = self._logits(inputs)
        losses = self.cls_head.loss((main, ), data_samples)
        if aux is not None and self.aux_loss_weight > 0:
            aux_losses = self.cls_head.loss((aux, ), data_samples)
            losses['loss_aux'] = aux_losses['loss'] * self.aux_loss_weight
        return losses

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """Softmax scores and labels of the main head."""
        return self.cls_head.predict((self._logits(inputs)[0], ),
                                     data_samples)
